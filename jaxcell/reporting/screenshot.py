"""A PNG of report.html as a browser draws it, with a headless Chromium (the README's pictures come from here).

  python -m jaxcell.reporting.screenshot runs/demo/report.html report.png [--height 1000]

Chromium is not a Python package: install it with the system (`apt-get install chromium`). The page is
self-contained (inline style, images as data URIs, no JavaScript), so nothing is fetched while drawing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "headless_shell")


def find_browser() -> str | None:
  return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def screenshot(html: str | Path, png: str | Path, width: int = 1200, height: int = 1000, browser: str | None = None):
  """Draws `html` in a width x height window and writes the PNG; raises RuntimeError when no browser is found."""
  browser = browser or find_browser()
  if browser is None:
    raise RuntimeError(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); apt-get install chromium")
  with tempfile.TemporaryDirectory() as profile:  # A throw-away profile: nothing of the user's is read or kept.
    command = [
      browser,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--hide-scrollbars",
      f"--user-data-dir={profile}",
    ]
    command += [f"--screenshot={Path(png).resolve()}", f"--window-size={width},{height}", Path(html).resolve().as_uri()]
    subprocess.run(command, check=True, timeout=120, capture_output=True)
  return Path(png)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("html")
  parser.add_argument("png")
  parser.add_argument("--width", type=int, default=1200)
  parser.add_argument("--height", type=int, default=1000)
  args = parser.parse_args(argv)
  try:
    print(screenshot(args.html, args.png, args.width, args.height))
  except (RuntimeError, subprocess.SubprocessError, OSError) as e:
    print(f"jaxcell screenshot: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
