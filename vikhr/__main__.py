from vikhr.cli import run

raise SystemExit(run())
