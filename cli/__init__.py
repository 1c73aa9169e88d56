"""The `macprovider-supervise` command line: parsing, wiring the actors, rendering.

No other layer imports this package: `actors` and `server` stand below it. Its entry points:
- `launch`: `main`, the console script's first lines (parent guard and stop signals before any
  heavy import), then the click group of `main`; `python -m macprovider.cli` runs the same.
- `autotune.schema.json` (package data): the JSON Schema of `autotune --json`, the contract
  for anything that reads that document.

Names only, nothing imported here: `launch` must run before click, pykka and MLX are loaded.
docs/ARCHITECTURE.md maps every module of the package.
"""
