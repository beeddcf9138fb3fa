"""The records the wings speak: an answer request and its answer (``answer``), and what a generator takes,
returns and raises (``generation``). Plain types, no behaviour beyond checking and formatting them."""
