from tuneloop import fit


def test_same_seed_same_metrics(tiny_model, toy_csv, tmp_path):
    def once(seed: int, workspace: str):
        run = fit(toy_csv, model=str(tiny_model), workspace=tmp_path / workspace, epochs=2, learning_rate=1e-3,
                  batch_size=8, seed=seed, dropout=0.1)
        return run.history, run.predict_texts(["good fine", "awful sad"]).probabilities

    first, second, other = once(7, "a"), once(7, "b"), once(8, "c")
    strip = [[{k: v for k, v in e.items() if k not in ("run_id", "seconds", "train_samples_per_s")} for e in h]
             for h in (first[0], second[0], other[0])]
    assert strip[0] == strip[1]
    assert (first[1] == second[1]).all()
    assert strip[0] != strip[2]
