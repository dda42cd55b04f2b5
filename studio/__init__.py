"""The studio: a Gradio web UI over llm/ (data, fine-tuning, comparison, models). Start it with `python app.py`."""
