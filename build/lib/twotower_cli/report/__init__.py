"""`twotower report` (and tune's plots): what a finished run's rankings look like.

diagnostics.py  recall by popularity bucket and by user activity, score spreads
plots.py        matplotlib figures on the Agg canvas
page.py         the self-contained HTML page and its PNGs
"""
