"""LoRA fine-tuning of the loaded model on your own chats and texts (the Training tab and its CLI).

    data.py        dataset files and saved chats -> records (every bad line named before a step runs)
    formatting.py  records -> token ids + labels with the model's chat template; the loss mask; preview
    lora.py        can this model be trained; peft's LoRA put on the loaded model and taken off again
    plan.py        every check before a run, the tokenized samples, run folders and their checkpoints
    job.py         the one training job: Transformers' Trainer in a thread, progress, stop, resume, result
    results.py     the adapter's card, perplexity before/after, merging into a new model folder
    __main__.py    python -m modules.training --model NAME --dataset FILE --output NAME ...
"""


class TrainingError(ValueError):
    """A run that cannot start (bad data, a model that cannot be trained, a name in use): one line for the user."""
