"""SLURM submission through submitit: settings, estimates, job arrays, the jobs file, status and the preemption-safe job."""
