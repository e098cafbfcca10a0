"""One module per source format; each defines FORMAT (see base.Format)."""
