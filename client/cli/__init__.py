"""`neffcache`: compile, look up and pull artifacts; inspect the cache.

Exit codes (every command):
  0 success
  1 a compile failed (or was cancelled)
  2 bad usage, a bad spec file, or a spec the service refused
  3 timed out (--wait --timeout)
  4 miss or not found
  5 integrity failure or runtime mismatch
  6 service unreachable, not neffcache, or not authorised (401/403)
Errors are one line on stderr; with --json the error body is also printed on stdout.

The package:
  app.py         the Typer app, its commands in --help order, and main(): how a run ends
  exits.py       a command's results -> its exit code and the reason it prints
  options.py     options several commands take (the spec options of compile and lookup: SpecArgs)
  session.py     the service this run talks to (and says it did), checks commands share
  progress.py    uploads, following jobs (compile --wait), how a compile result reads
  compile.py     compile, lookup          push.py        compile --from-neuron-cache, push
  pull.py        pull, lock               jobs.py        jobs, logs, cancel
  inspection.py  ls, show, stats, hits, workers, toolchains
  pin.py         pin add, pin rm, pin ls (and lock --pin)
  prewarm.py     prewarm (and the readiness lock --compiler requires)

Start-up is part of every command's time (a deployment's `pull` is timed against a plain boto3
download): modules that only some commands need (client/specs.py with yaml and the spec models,
neffcache.neff, the libneuronxla restore) are imported inside those commands, not here.
"""

from neffcache.client.cli.app import app, main

__all__ = ["app", "main"]
