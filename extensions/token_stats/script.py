"""token_stats: tokens per second, time to first token and token counts under each reply."""

params = {
    "display_name": "Token stats",
    "is_tab": False,
    "show_prompt_tokens": True,
}


def format_stats(stats):
    """One line from the pipeline's numbers, e.g. '42 tokens · 12.3 tok/s · first token 85 ms · prompt 20 tokens'."""
    seconds = stats.get("seconds") or 0.0
    first = stats.get("first_token_seconds")
    tokens = stats.get("tokens", 0)
    # Speed over the generation itself: from the first token on, so queueing and prompt time do not count.
    span = seconds - first if first is not None and seconds > first else seconds
    rate = (tokens - 1) / span if first is not None and tokens > 1 and span > 0 else 0.0
    parts = [f"{tokens} tokens", f"{rate:.1f} tok/s"]
    if first is not None:
        parts.append(f"first token {first * 1000:.0f} ms")
    if params["show_prompt_tokens"]:
        parts.append(f"prompt {stats.get('prompt_tokens', 0)} tokens")
    return " · ".join(parts)


def reply_footer(stats, state):
    """Parlour hook: the line shown under the finished reply."""
    return format_stats(stats)
