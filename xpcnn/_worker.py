"""Entry point of a worker process (``python -m xpcnn._worker READ_FD WRITE_FD``): see :mod:`xpcnn.replicas`."""
import sys

from xpcnn.replicas import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
