"""Evaluation: 1:1 verification on insightface .bin sets (``eval.verification``), IJB-B/C template
verification (``eval.ijb``), batched flip-test embedding (``eval.embed``), safe .bin unpickling
(``eval.safe_pickle``) and result tables/plots (``eval.report``).  The CLI is ``eval_benchmarks.py``."""
