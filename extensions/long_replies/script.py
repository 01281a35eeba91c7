"""long_replies: discourage the model from ending its turn early.

For the first `min_length` new tokens, the end-of-turn tokens' logits are lowered by `penalty`
(`inf`: forbidden), so short answers grow into longer ones without banning the end for good.
"""

import math

import gradio as gr

params = {
    "display_name": "Long replies",
    "is_tab": False,
    "min_length": 120,
    "penalty": math.inf,
}


class DiscourageEarlyEnd:
    """Lower the end-of-turn logits until `min_length` tokens were generated after the prompt.

    >>> import torch
    >>> p = DiscourageEarlyEnd(eos_token_ids=[2], prompt_length=3, min_length=1, penalty=math.inf)
    >>> p(torch.tensor([[5, 6, 7]]), torch.zeros(1, 4))[0, 2].item()
    -inf
    """

    def __init__(self, eos_token_ids, prompt_length, min_length, penalty):
        if min_length < 0 or penalty < 0:
            raise ValueError("long_replies: min_length and penalty must be 0 or more")
        self.eos_token_ids = list(eos_token_ids)
        self.prompt_length = prompt_length
        self.min_length = min_length
        self.penalty = penalty

    def __call__(self, input_ids, scores):
        if not self.eos_token_ids or input_ids.shape[1] - self.prompt_length >= self.min_length:
            return scores
        out = scores.clone()
        out[:, self.eos_token_ids] = out[:, self.eos_token_ids] - self.penalty
        return out


def logits_processor_modifier(processor_list, input_ids):
    """Add the processor; Parlour's processor_list carries the model's eos_token_ids."""
    eos = getattr(processor_list, "eos_token_ids", ())
    processor_list.append(DiscourageEarlyEnd(eos, input_ids.shape[1], int(params["min_length"]),
                                             float(params["penalty"])))
    return processor_list


def ui():
    length = gr.Slider(0, 2048, value=params["min_length"], step=1, label="Minimum reply length (tokens)")
    length.change(lambda x: params.update({"min_length": x}), length, None, api_visibility="private")
