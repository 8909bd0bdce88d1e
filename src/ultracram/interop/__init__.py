"""Import and export: Hugging Face BERT, cramming's crammedBERT, UltraFastBERT."""
