"""``python -m sgfd_fast.study SPEC``: does SGFD help on my data? Every arm x seed, then statistics.

A spec is a YAML file (a shipped one by name, ``python -m sgfd_fast.study --list``, or a path) in
the format :data:`SPEC_FORMAT` shows (``python -m sgfd_fast.study --help`` prints it).

The whole spec is checked before anything trains: an unknown key names the arm and the closest
known keys; errors exit with status 2. Each arm x seed is a normal run directory,
``<out>/<arm>/seed-<seed>/``, trained by :func:`sgfd_fast.training.train`. A rerun skips finished
runs (``results.json`` present) and continues unfinished ones with
:func:`sgfd_fast.training.resume`, so an interrupted study is resumed by running the same command
again; a run directory trained with another configuration is an error (never silently reused).
A smaller study, from the command line without editing the spec: ``--seeds 1,2`` replaces the
spec's seeds, ``--epochs N`` and ``key=value`` overrides apply to every arm (after the spec's
``config`` and the arm's own keys); the report says what was changed, and reruns and ``--report``
need the same options.
``--shard I/N`` trains only every N-th run (the I-th of each N, in seed-major order), so N
independent processes (or machines sharing the directory) split a study; each writes the report
of whatever has finished, the last one the full report; ``--report`` only writes it. ``--arms
A,B`` trains only those arms (e.g. the baseline and one arm on every seed first, the rest
later); the report still covers every finished run of the spec.

The report, in ``<out>``: ``study.json`` (everything below, per seed), ``study.md`` (tables), and
with matplotlib (``pip install 'sgfd_fast[plot]'``) ``bars.png`` and ``curves.png``:

* per arm and metric: mean ± sample standard deviation (ddof = 1) over seeds; epochs trained and
  how many runs stopped at the epoch cap (``epochs``) instead of early (for a grid arm: those of
  the selected point); ``compute_time_s``: the training and validation seconds of every
  ``metrics.jsonl``, grid points included; the grid point selected
  (arms with ``hyper_parameters``); SGFD diagnostics at the best epoch
  (``sgfd_fast.training.diagnostics``);
* per arm against the baseline, on the seeds both finished: the paired differences
  ``d_s = arm_s - baseline_s``, their mean with a 95 % confidence interval
  ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` (Student's t, ``scipy.stats.t``) and the two-sided
  Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, exact for small n). The test drops
  zero differences; with m non-zero ones the smallest p it can give is ``2 / 2^m`` (all of one
  sign): m < 6 cannot reach 0.05, which the report says;
* per contrast ``name: [arm, reference]``: the same paired statistics of ``arm - reference``
  (e.g. the effect of distillation alone: SGFD against the same student without its losses).

The wing, one concern per module, each importing only those before it: :mod:`.spec` (the spec),
:mod:`.stats` (the statistics), :mod:`.rundirs` (the arm x seed run directories), :mod:`.report`
(one study's summary and report files), :mod:`.run` (:func:`run_study`), :mod:`.summary`
(``--summary``: one table and forest plot of a contrast across finished studies), :mod:`.cli`
(the command line; ``__main__``).
"""

from .cli import build_parser, main
from .report import summarise, write_report
from .run import run_study
from .spec import SPEC_FORMAT, STUDIES_DIR, Spec, find_spec, load_spec, shipped_specs
from .stats import describe, paired_difference
from .summary import summarise_studies, write_summary

__all__ = ["Spec", "load_spec", "find_spec", "shipped_specs", "run_study", "summarise",
           "paired_difference", "describe", "write_report", "main", "build_parser",
           "SPEC_FORMAT", "STUDIES_DIR", "summarise_studies", "write_summary"]
