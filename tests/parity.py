"""What every parity test (pride against a TRL trainer on the same model and batch) asserts of the
gradients, with one tolerance: per parameter tensor, max |difference| <= 1e-6 + 1e-4 x max |TRL's
gradient|. The two sides sum the same fp32 terms in another order (TRL pads and runs each row
alone, pride packs rows), so the difference scales with the gradient's own size; 1e-6 covers
tensors whose gradient is near zero."""


def assert_same_gradients(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for name in ours:
        diff = (ours[name] - theirs[name]).abs().max().item()
        scale = theirs[name].abs().max().item()
        assert diff <= 1e-6 + 1e-4 * scale, (name, diff, scale)
