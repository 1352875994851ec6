"""The d2l chapter's model, data and training loop: what every implementation is measured inside."""
