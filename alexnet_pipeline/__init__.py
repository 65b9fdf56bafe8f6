"""AlexNet fine-tuning as a plain library: config, data, model, training,
evaluation and reporting. It never imports Prefect; tasks/ and flows/ wrap it."""

__version__ = "0.1.0"
