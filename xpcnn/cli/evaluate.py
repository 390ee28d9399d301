"""``xpcnn evaluate``: test loss and accuracy of a checkpoint, on its data set or another."""
from __future__ import annotations

from ..checkpoint import Checkpoint
from ..data import DataLoader
from ..layers import CrossEntropyLoss
from ..training import evaluate
from ._common import add_backend_arguments, add_data_arguments, command_threads, load_data, model_from_checkpoint
from ._types import positive

HELP = "evaluate a checkpoint on a data set's test split (default: the data set it was trained on)"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint from `xpcnn train`")
    add_backend_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--batch-size", type=positive, default=256, help="default 256")


def run(args) -> int:
    ckpt = Checkpoint(args.checkpoint)
    options = ckpt.meta.get("options", {})
    dataset = args.dataset or options.get("dataset", "digits")
    data_dir = args.data_dir if args.dataset or args.data_dir else options.get("data_dir")
    with command_threads(args.threads):
        model, normalizer = model_from_checkpoint(ckpt, args.backend)
        _, test_set = load_data(dataset, data_dir, args.limit)
        loader = DataLoader(test_set, min(args.batch_size, len(test_set)) if args.batch_size > 0 else args.batch_size,
                            backend=model.backend, normalizer=normalizer)
        result = evaluate(model, CrossEntropyLoss(), loader)
    print(f"{ckpt.meta.get('architecture')} (epoch {ckpt.epoch}) on {dataset} test ({len(test_set)} images, "
          f"{model.backend.spec}): loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}")
    return 0
