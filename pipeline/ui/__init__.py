"""The web view (`pipeline ui`) and the shareable report (`pipeline report`).

`server.py` serves the page and its JSON with aiohttp; `security.py` decides who may read and act;
`data.py`, `charts.py` and `rows.py` are the queries; `actions.py` the controls; `report.py` writes one
self-contained HTML file. The page itself is `static/` (plain HTML, CSS, and vanilla JS that draws its
charts as SVG): nothing is loaded from the internet.
"""
