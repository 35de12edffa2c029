"""The story experiment (the paper's Sec. 4.1, Tables 1-2), model-agnostic, one job per module.

    rows     run the table's rows into per-story files (resumable; sharded with accelerate)
    scoring  score the saved frames with any Evaluator (and a GroundTruth where one exists)
    report   the paper's numbers beside ours: changes, verdicts, per-frame claims, markdown, figures

Every public name is importable from `acdc_lib.experiment` itself.
"""
from acdc_lib.experiment.report import (COMPARISONS, FRAME_GAPS, METRIC_MAP, PAPER_TABLE1, PAPER_TABLE2,
                                        accumulation_claims, compare_with_paper, comparison_markdown,
                                        curve_claims, frame_gaps_markdown, paired_changes, paired_changes_markdown,
                                        paper_table_markdown, plot_curves, plot_example_frames, plot_frame_rows, example_frames,
                                        reproduction_verdicts, verdicts_markdown)
from acdc_lib.experiment.rows import (DEFAULT_ROWS, GENERATION_FIELDS, ROWS, DamagedRunFileWarning, ExperimentConfig,
                                      RowSpec, arm_true_context, bad_frames, check_story_files,
                                      load_frames, process_share, run_experiment, stopped_stories, story_seed,
                                      strength_sweep, sweep_label)
from acdc_lib.experiment.scoring import (ResultsTable, frame_gaps, frame_trend, paired_difference, paired_frame_gaps,
                                         summarise, summarise_sweep)

__all__ = [
    "COMPARISONS", "FRAME_GAPS", "METRIC_MAP", "PAPER_TABLE1", "PAPER_TABLE2", "accumulation_claims",
    "compare_with_paper", "comparison_markdown", "curve_claims", "frame_gaps_markdown", "paired_changes",
    "paired_changes_markdown", "paper_table_markdown", "plot_curves", "plot_example_frames", "plot_frame_rows", "example_frames", "reproduction_verdicts",
    "verdicts_markdown", "DEFAULT_ROWS", "GENERATION_FIELDS", "ROWS", "DamagedRunFileWarning", "ExperimentConfig",
    "RowSpec", "arm_true_context", "bad_frames", "check_story_files", "stopped_stories",
    "load_frames", "process_share", "run_experiment", "story_seed", "strength_sweep", "sweep_label", "ResultsTable",
    "frame_gaps", "frame_trend", "paired_difference", "paired_frame_gaps", "summarise", "summarise_sweep",
]
