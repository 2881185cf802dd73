"""Process start-up: distributed groups, seeding, and megatron-core on CPU.

`vikhr.runtime.distributed` (the job's environment), `vikhr.runtime.cpu_compat` (megatron on the
CPU) and `vikhr.runtime.megatron` (the version pin); the package itself imports nothing, so the
light version check does not load torch.
"""
