from tasks.methods.runner import every_percent


def test_progress_is_reported_once_per_percent_and_always_at_the_end():
    calls = []
    progress = every_percent(lambda *args: calls.append(args))
    for done in range(1, 10_001):
        progress(f"x{done}", done, 10_000)
    # the first unit, then each whole percent
    assert len(calls) == 101 and calls[0] == ("x1", 1, 10_000) and calls[1] == ("x100", 100, 10_000) and calls[-1] == ("x10000", 10_000, 10_000)
    few = []
    progress = every_percent(lambda *args: few.append(args))
    for done in range(1, 4):
        progress(f"u{done}", done, 3)
    assert [c[0] for c in few] == ["u1", "u2", "u3"]  # fewer units than percents: every one
