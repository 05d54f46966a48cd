"""Programs beside the pipeline, run with `python -m twotower_cli.tools.<name>` (the top layer).

compare.py   several configurations through `twotower run`, one Markdown table
loadtest.py  `make loadtest`: concurrent clients against `twotower serve`
news_sim.py  a simulated news app in `dataset=news`'s format, and its oracle
"""
