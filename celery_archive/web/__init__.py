"""``celery-archive serve``: read-only web pages and a JSON API over an archive.

    app.py       the ASGI application (Starlette): GET routes, headers, token check
    views.py     the pages and the API
    archive.py   what they read: results by id, ids by prefix, runs (through cache.py)
    cache.py     the in-process cache of what was read (archive objects are write-once)
    present.py   records as `celery-archive restore` prints them
    auth.py      loopback by default; a token for anything else
    command.py   the click command
"""
