"""Evaluation tools, above the stages: they generate demo data, load a crmflow config and score a stage.

``python -m crmflow.evaluation.dedupe_eval`` scores the deduper against the demo data's truth clusters;
``python -m crmflow.evaluation.dedupe_train`` estimates its Fellegi-Sunter weights.
"""
