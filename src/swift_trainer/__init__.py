"""Event-sourced service for ms-swift fine-tuning jobs on your own GPU hosts."""
