"""`dlio-ext run`: one run from composed config to written results (harness), its endings and
signals (lifecycle), and the checks before anything is written (preflight)."""
