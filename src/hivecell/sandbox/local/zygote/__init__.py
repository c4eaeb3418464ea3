"""The guest zygote: one pre-imported Python per host, forked into every local box.

A box's boot process and guest agent are Python; imported in each box they cost ~30 MB of
private memory and ~0.4 s of every cold start (pydantic, anyio, Xlib, ...). The zygote
imports them once, freezes what it holds for the garbage collector, and forks a copy into
each box as it starts: the copies share those pages copy-on-write, and boot begins with the
agent already imported.

- ``launch``: the provider's side: the zygote's socket and how to start it (bwrap with only
  a mount namespace, so its paths are the box's: /opt/hivecell/...).
- ``client``: the supervisor's side (stdlib only): connect, starting the zygote if none
  serves, and ask for a boot in a box that bwrap has set up.
- ``server``: the zygote (``python -m hivecell.sandbox.local.zygote.server``).
- ``join``: how a forked copy becomes a process of the box (namespaces, cgroups, uid,
  capabilities, seccomp): the part that must match bwrap exactly.

Kept import-free: the supervisor imports ``client`` and must start in milliseconds.
"""
