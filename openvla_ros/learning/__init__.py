"""The learning loop: demonstrations -> Bridge action labels -> dataset -> fine-tuning -> export."""
