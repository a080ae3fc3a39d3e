"""From captured feedback to a QLoRA adapter: dataset building and training jobs (issue 5)."""
