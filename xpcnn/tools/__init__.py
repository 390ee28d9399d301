"""Tools around the library: the benchmark (:mod:`.bench`), backend parity (:mod:`.parity`), PyTorch twins
(:mod:`.torch_compat`) and operation counts (:mod:`.opcount`). The CLI runs them; the core never imports them."""
