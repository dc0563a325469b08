"""The local Linear Learner: hyperparameters, training behaviour, artifact, inference, container."""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import QuantileRegressor

from citymodels_devkit.archives import extract_safely
from citymodels_devkit.linear_learner import (
    DataError,
    HyperparameterError,
    InferenceError,
    LinearLearnerModel,
    ModelFormatError,
    TrainingInfo,
    TrainingResult,
    evaluate,
    fit,
    load_model,
    parse_hyperparameters,
    read_channel,
    run_training,
    train,
)
from citymodels_devkit.linear_learner.container import main

# The notebook's training job (section 3).
NOTEBOOK_HP = {
    "feature_dim": "10",
    "predictor_type": "regressor",
    "loss": "absolute_loss",
    "epochs": "10",
    "num_models": "32",
    "mini_batch_size": "100",
}
NOISE_SIGMA = 5_000.0
City = dict[str, tuple[np.ndarray, np.ndarray]]
ROW = [2005.0, 2500.0, 3.0, 2.0, 1.1, 2.0, 1.0, 0.0, 0.0, 1.0]


def house_city(
    rng: np.random.Generator, rows: int, sigma: float = NOISE_SIGMA
) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's houses, one-hot encoded as the processing job does (10 features).

    Each city's price effects vary by up to ±30% around the notebook's.
    """
    effects = np.array([150, 10_000, 15_000, 15_000, 10_000, 10_000, 15_000, 5_000.0])
    effects *= rng.uniform(0.7, 1.3, size=effects.size)
    base = rng.uniform(50_000, 150_000)
    year = np.minimum(2019, rng.normal(1995, 10, rows).astype(int)).astype(float)
    sqft = rng.normal(3000, 750, rows)
    beds = rng.integers(2, 7, rows).astype(float)
    baths = rng.integers(2, 7, rows) / 2
    lot = np.round(rng.normal(1.0, 0.25, rows), 2)
    garage = rng.integers(0, 4, rows).astype(float)
    porch = rng.integers(0, 2, rows).astype(float)
    deck = rng.integers(0, 2, rows).astype(float)
    price = (
        effects[0] * sqft
        + effects[1] * beds
        + effects[2] * baths
        + effects[3] * lot
        + effects[4] * deck
        + effects[5] * porch
        + effects[6] * garage
        - effects[7] * (2019 - year)
        + base
        + rng.normal(0, sigma, rows)
    )
    features = np.column_stack(
        [year, sqft, beds, baths, lot, garage, porch, 1 - porch, deck, 1 - deck]
    )
    return features, price


def notebook_split(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> City:
    """10% test, then 30% of the rest validation, as the notebook splits."""
    order = rng.permutation(len(y))
    n_test = round(0.1 * len(y))
    n_val = round(0.3 * (len(y) - n_test))
    test, val, tr = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": (x[tr], y[tr]), "validation": (x[val], y[val]), "test": (x[test], y[test])}


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, newline: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        ",".join(repr(float(v)) for v in (label, *row)) for label, row in zip(y, x, strict=True)
    ]
    path.write_text(newline.join(lines) + newline, newline="")


def mae(model: LinearLearnerModel, x: np.ndarray, y: np.ndarray) -> float:
    return evaluate(model, x, y)["absolute_loss"]


@pytest.fixture(scope="module")
def city() -> City:
    rng = np.random.default_rng(2024)
    return notebook_split(rng, *house_city(rng, 1000))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, city) -> TrainingResult:
    """One job trained from CSV channels with the notebook's hyperparameters."""
    root = tmp_path_factory.mktemp("job")
    channels = {}
    for name, (x, y) in city.items():
        write_csv(root / "data" / name / f"{name}.csv", x, y)
        channels[name] = root / "data" / name
    return train(channels, NOTEBOOK_HP, root / "model")


def fit_city(city: City, **hyperparameters: str) -> tuple[LinearLearnerModel, TrainingInfo]:
    hp = {**NOTEBOOK_HP, **hyperparameters}
    (x, y), (xv, yv) = city["train"], city["validation"]
    return fit(x, y, xv, yv, hp, seed=0)


# --- hyperparameters ---------------------------------------------------------------


def test_notebook_hyperparameters_are_accepted_with_linear_learner_defaults_for_the_rest():
    # GIVEN the notebook's hyperparameters, as strings
    # WHEN they are parsed
    hp = parse_hyperparameters(NOTEBOOK_HP)
    # THEN they are typed, and everything not given takes Linear Learner's default
    assert (hp.feature_dim, hp.epochs, hp.num_models, hp.mini_batch_size) == (10, 10, 32, 100)
    assert hp.loss == "absolute_loss"
    assert hp.normalize_data and hp.normalize_label and hp.use_bias
    assert (hp.early_stopping_patience, hp.early_stopping_tolerance) == (3, 0.001)
    assert (hp.huber_delta, hp.optimizer, hp.num_point_for_scaler) == (1.0, "adam", 10000)
    assert hp.learning_rate is None and hp.wd is None and hp.l1 is None  # auto


def test_auto_values_resolve_as_linear_learner_documents_for_a_regressor():
    hp = parse_hyperparameters(
        {
            "predictor_type": "regressor",
            "loss": "auto",
            "num_models": "auto",
            "normalize_label": "auto",
            "optimizer": "auto",
            "epochs": "15",
        }
    )
    assert (hp.loss, hp.num_models, hp.normalize_label, hp.optimizer) == (
        "squared_loss",
        32,
        True,
        "adam",
    )
    assert hp.epochs == 15 and hp.mini_batch_size == 1000


def test_python_sdk_boolean_spelling_is_accepted():
    # The SageMaker Python SDK turns True into "True".
    hp = parse_hyperparameters({"predictor_type": "regressor", "use_bias": "False"})
    assert hp.use_bias is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", "0"),
        ("epochs", "ten"),
        ("epochs", "2.5"),
        ("epochs", "²"),
        ("mini_batch_size", "-100"),
        ("num_models", "0"),
        ("num_models", "100000"),
        ("feature_dim", "1.5"),
        ("learning_rate", "0"),
        ("learning_rate", "fast"),
        ("wd", "-0.1"),
        ("l1", "nan"),
        ("huber_delta", "0"),
        ("early_stopping_tolerance", "inf"),
        ("early_stopping_patience", "0"),
        ("normalize_data", "yes"),
        ("normalize_label", "1"),
        ("use_bias", "auto"),
        ("loss", "hinge_loss"),
        ("loss", "quantile_loss"),
        ("loss", "mse"),
        ("optimizer", "rmsprop"),
        ("num_point_for_scaler", "0"),
    ],
)
def test_invalid_value_is_rejected_naming_hyperparameter_and_value(name, value):
    # GIVEN an otherwise valid set with one bad value
    raw = {**NOTEBOOK_HP, name: value}
    # WHEN parsed THEN the error names both the hyperparameter and the value
    with pytest.raises(HyperparameterError, match=re.escape(f"{name}={value!r}")) as caught:
        parse_hyperparameters(raw)
    assert isinstance(caught.value, ValueError)
    assert (caught.value.name, caught.value.value) == (name, value)


def test_unknown_hyperparameter_is_rejected_not_ignored():
    with pytest.raises(HyperparameterError, match=r"learning_rat.*unknown hyperparameter"):
        parse_hyperparameters({**NOTEBOOK_HP, "learning_rat": "0.1"})


def test_linear_learner_hyperparameter_that_is_not_implemented_says_so():
    with pytest.raises(HyperparameterError, match=r"momentum.*does not implement"):
        parse_hyperparameters({**NOTEBOOK_HP, "momentum": "0.9"})


def test_classifier_predictor_type_is_rejected():
    with pytest.raises(HyperparameterError, match="predictor_type='binary_classifier'"):
        parse_hyperparameters({**NOTEBOOK_HP, "predictor_type": "binary_classifier"})


def test_predictor_type_is_required_as_in_linear_learner():
    with pytest.raises(HyperparameterError, match="predictor_type: is required"):
        parse_hyperparameters({"epochs": "3"})


def test_hyperparameter_values_must_be_strings_as_sagemaker_passes_them():
    with pytest.raises(HyperparameterError, match=r"epochs=10.*string"):
        parse_hyperparameters({**NOTEBOOK_HP, "epochs": 10})  # type: ignore[dict-item]


# --- accuracy ------------------------------------------------------------------------


def test_notebook_setup_matches_exact_least_absolute_deviation_fit_over_20_cities():
    # GIVEN 20 cities of 1,000 notebook houses, split as the notebook splits them
    rng = np.random.default_rng(7)
    ours, exact = [], []
    for index in range(20):
        parts = notebook_split(rng, *house_city(rng, 1000))
        # WHEN trained with the notebook's hyperparameters (genuine mini-batch training)
        (x, y), (xv, yv) = parts["train"], parts["validation"]
        model, _ = fit(x, y, xv, yv, NOTEBOOK_HP, seed=index)
        lad = QuantileRegressor(quantile=0.5, alpha=0, solver="highs").fit(*parts["train"])
        x_test, y_test = parts["test"]
        ours.append(mae(model, x_test, y_test))
        exact.append(float(np.mean(np.abs(lad.predict(x_test) - y_test))))
    # THEN the mean test MAE is within 2% of the exact LAD optimum's
    ratio = np.mean(ours) / np.mean(exact)
    assert ratio <= 1.02, f"mean test MAE {np.mean(ours):.0f} is {ratio:.4f} x LAD's"


def test_with_5000_rows_per_city_test_error_is_within_5_percent_of_the_noise_floor():
    # GIVEN 20 cities of 5,000 houses with price noise sigma = 5,000
    rng = np.random.default_rng(8)
    errors = []
    for index in range(20):
        parts = notebook_split(rng, *house_city(rng, 5000))
        (x, y), (xv, yv) = parts["train"], parts["validation"]
        model, _ = fit(x, y, xv, yv, NOTEBOOK_HP, seed=index)
        errors.append(mae(model, *parts["test"]))
    # THEN the mean test MAE is close to what the true formula itself would score
    floor = NOISE_SIGMA * math.sqrt(2 / math.pi)
    assert np.mean(errors) <= 1.05 * floor, f"{np.mean(errors) / floor:.4f} x the noise floor"


def test_training_is_deterministic_for_a_seed(city):
    first, _ = fit_city(city)
    again, _ = fit_city(city)
    (x, y), (xv, yv) = city["train"], city["validation"]
    other, _ = fit(x, y, xv, yv, NOTEBOOK_HP, seed=1)
    assert first.to_artifact_bytes() == again.to_artifact_bytes()
    assert other.weights != first.weights


# --- what each hyperparameter does ---------------------------------------------------


def test_candidates_are_trained_together_and_differ_in_auto_settings(city):
    # WHEN learning_rate, wd and l1 are auto
    _, info = fit_city(city)
    # THEN the 32 candidates span learning rates and regularisation levels
    rates = {c.learning_rate for c in info.candidates}
    assert len(info.candidates) == 32 and len(rates) == 32
    assert {c.wd for c in info.candidates} == {0.0, 1e-5, 1e-4, 1e-3}
    assert info.best_candidate in info.candidates


def test_explicit_values_apply_to_every_candidate(city):
    _, info = fit_city(city, learning_rate="0.05", wd="0.001", l1="0")
    assert {(c.learning_rate, c.wd, c.l1) for c in info.candidates} == {(0.05, 0.001, 0.0)}


def test_many_candidates_beat_one_when_training_is_short(city):
    # GIVEN only two epochs, where the right learning rate matters most
    one, _ = fit_city(city, epochs="2", num_models="1")
    many, _ = fit_city(city, epochs="2", num_models="32")
    # THEN picking the best of 32 gives a clearly better model
    assert mae(many, *city["test"]) < 0.8 * mae(one, *city["test"])


def test_more_epochs_fit_better(city):
    short, _ = fit_city(city, epochs="1")
    long, info = fit_city(city, epochs="10", early_stopping_patience="100")
    assert info.epochs_run == 10
    assert mae(long, *city["validation"]) < 0.7 * mae(short, *city["validation"])


def test_mini_batch_size_sets_the_number_of_updates(city):
    n = len(city["train"][1])
    for size in (50, 100, 1000):
        _, info = fit_city(city, epochs="3", mini_batch_size=str(size), early_stopping_patience="9")
        assert info.updates == 3 * math.ceil(n / min(size, n))


def test_early_stopping_patience_one_stops_sooner_than_a_huge_patience(city):
    _, patient = fit_city(city, epochs="30", early_stopping_patience="1000")
    _, impatient = fit_city(city, epochs="30", early_stopping_patience="1")
    assert patient.epochs_run == 30 and not patient.stopped_early
    assert impatient.stopped_early and impatient.epochs_run < 30


def test_larger_early_stopping_tolerance_stops_sooner(city):
    _, strict = fit_city(
        city, epochs="30", early_stopping_patience="2", early_stopping_tolerance="1e-9"
    )
    _, loose = fit_city(
        city, epochs="30", early_stopping_patience="2", early_stopping_tolerance="0.5"
    )
    assert loose.epochs_run < strict.epochs_run


def test_kept_weights_come_from_the_best_epoch(city):
    # GIVEN a run that goes on long after its best epoch
    model, info = fit_city(city, epochs="30", early_stopping_patience="1000")
    # THEN the model kept is the one with the lowest validation loss seen in any epoch
    best = min(info.epoch_losses)
    assert info.epoch_losses[-1] > best
    assert model.best_candidate["epoch"] == info.best_epoch
    assert info.epoch_losses[info.best_epoch - 1] == pytest.approx(best)
    validation_loss = evaluate(model, *city["validation"])["objective_loss"]
    assert validation_loss == pytest.approx(best * model.normalization.label_scale, rel=1e-9)


def standardised_norm(model: LinearLearnerModel) -> float:
    # Weights in standardised units: what the penalties act on.
    norm = model.normalization
    w = np.asarray(model.weights) * np.asarray(norm.feature_scale) / norm.label_scale
    return float(np.abs(w).sum())


def test_l2_weight_decay_shrinks_the_weights(city):
    free, _ = fit_city(city, wd="0", l1="0")
    decayed, _ = fit_city(city, wd="1.0", l1="0")
    assert standardised_norm(decayed) < 0.8 * standardised_norm(free)


def test_large_l1_zeroes_weights(city):
    # GIVEN a penalty larger than most features' pull on the absolute loss
    free, _ = fit_city(city, l1="0", wd="0")
    sparse, _ = fit_city(city, l1="0.3", wd="0")
    # THEN the weakest features get weights of exactly zero; the strong ones survive
    assert sum(w == 0.0 for w in free.weights) == 0
    zeros = sum(w == 0.0 for w in sparse.weights)
    assert 4 <= zeros < 10
    assert standardised_norm(sparse) < standardised_norm(free)


def test_huber_loss_resists_outliers_that_pull_squared_loss():
    # GIVEN training labels where 5% are off by +3,000,000
    rng = np.random.default_rng(11)
    parts = notebook_split(rng, *house_city(rng, 1000))
    (x, y), (xv, yv) = parts["train"], parts["validation"]
    y, yv = y.copy(), yv.copy()
    y[rng.random(len(y)) < 0.05] += 3_000_000
    yv[rng.random(len(yv)) < 0.05] += 3_000_000
    hp = {**NOTEBOOK_HP, "epochs": "15"}
    # WHEN trained with squared and with Huber loss
    squared, _ = fit(x, y, xv, yv, {**hp, "loss": "squared_loss"})
    huber, _ = fit(x, y, xv, yv, {**hp, "loss": "huber_loss", "huber_delta": "0.1"})
    # THEN Huber's errors on clean test rows are a fraction of squared loss's
    assert mae(huber, *parts["test"]) < 0.5 * mae(squared, *parts["test"])


def test_huber_delta_large_behaves_like_squared_loss(city):
    huge, _ = fit_city(city, loss="huber_loss", huber_delta="1000")
    squared, _ = fit_city(city, loss="squared_loss")
    assert huge.weights == pytest.approx(squared.weights, rel=1e-9, abs=1e-9)


def test_use_bias_false_fits_through_the_origin():
    # GIVEN data with no intercept
    rng = np.random.default_rng(3)
    x = rng.normal(2, 2, size=(600, 4))
    y = x @ np.array([3.0, -2.0, 0.5, 1.0]) + rng.normal(0, 0.1, 600)
    hp = {"predictor_type": "regressor", "mini_batch_size": "50", "epochs": "10"}
    # WHEN trained without a bias
    model, _ = fit(x[:400], y[:400], x[400:], y[400:], {**hp, "use_bias": "false"})
    with_bias, _ = fit(x[:400], y[:400], x[400:], y[400:], hp)
    # THEN the bias is exactly zero, the weights are right, and a zero row scores zero
    assert model.bias == 0.0
    assert model.weights == pytest.approx([3.0, -2.0, 0.5, 1.0], abs=0.05)
    assert model.predict([[0.0] * 4]) == [0.0]
    assert with_bias.bias != 0.0


def test_normalize_label_false_trains_on_raw_labels():
    # GIVEN labels in the hundreds of thousands
    rng = np.random.default_rng(5)
    parts = notebook_split(rng, *house_city(rng, 1000))
    hp = {**NOTEBOOK_HP, "learning_rate": "0.1"}
    (x, y), (xv, yv) = parts["train"], parts["validation"]
    raw, _ = fit(x, y, xv, yv, {**hp, "normalize_label": "false"})
    scaled, _ = fit(x, y, xv, yv, hp)
    # THEN no label normalisation is recorded, and the same learning rate, applied to
    # raw dollars, gets nowhere near the normalised fit (as in Linear Learner)
    assert (raw.normalization.label_mean, raw.normalization.label_scale) == (0.0, 1.0)
    assert scaled.normalization.label_scale > 1000
    assert mae(raw, *parts["test"]) > 10 * mae(scaled, *parts["test"])


def test_normalize_label_false_fits_labels_of_unit_scale():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(800, 3))
    y = x @ np.array([0.5, -1.0, 0.25]) + 0.3 + rng.normal(0, 0.05, 800)
    hp = {"predictor_type": "regressor", "mini_batch_size": "50", "normalize_label": "false"}
    model, _ = fit(x[:600], y[:600], x[600:], y[600:], hp)
    assert model.weights == pytest.approx([0.5, -1.0, 0.25], abs=0.02)
    assert model.bias == pytest.approx(0.3, abs=0.02)


def test_normalize_data_false_still_trains_but_standardising_helps(city):
    raw, info = fit_city(city, normalize_data="false")
    standardised, _ = fit_city(city)
    baseline = float(np.mean(np.abs(city["test"][1] - np.median(city["train"][1]))))
    # THEN no feature normalisation is recorded, the learning rate was scaled down for
    # the raw feature scales, the model beats a constant guess, and standardising wins
    assert set(raw.normalization.feature_scale) == {1.0}
    assert set(raw.normalization.feature_mean) == {0.0}
    assert max(c.learning_rate for c in info.candidates) < 0.01
    assert mae(raw, *city["test"]) < 0.9 * baseline
    assert mae(standardised, *city["test"]) < 0.2 * mae(raw, *city["test"])


def test_constant_feature_is_kept_unscaled_and_does_not_break_training(city):
    x, y = city["train"]
    xv, yv = city["validation"]
    with_constant = np.column_stack([x, np.full(len(y), 7.0)])
    model, _ = fit(
        with_constant,
        y,
        np.column_stack([xv, np.full(len(yv), 7.0)]),
        yv,
        {**NOTEBOOK_HP, "feature_dim": "11"},
    )
    assert model.normalization.feature_scale[-1] == 1.0
    assert math.isfinite(model.weights[-1]) and math.isfinite(model.bias)
    assert mae(model, np.column_stack([city["test"][0], np.full(100, 7.0)]), city["test"][1]) < 5000


def test_num_point_for_scaler_samples_rows_for_the_normalisation(city):
    x, _ = city["train"]
    all_rows, _ = fit_city(city, epochs="1")
    ten_rows, _ = fit_city(city, epochs="1", num_point_for_scaler="10")
    assert all_rows.normalization.feature_mean == pytest.approx(x.mean(axis=0))
    assert ten_rows.normalization.feature_mean != pytest.approx(x.mean(axis=0), rel=1e-3)


def test_sgd_optimizer_trains_too(city):
    adam, _ = fit_city(city)
    sgd, _ = fit_city(city, optimizer="sgd")
    assert sgd.weights != adam.weights
    assert mae(sgd, *city["test"]) < 1.1 * mae(adam, *city["test"])
    assert sgd.hyperparameters["optimizer"] == "sgd"


def test_without_validation_data_training_selects_on_training_loss(city):
    x, y = city["train"]
    model, info = fit(x, y, None, None, NOTEBOOK_HP)
    assert info.selection_channel == "train"
    assert mae(model, *city["test"]) < 4600


def test_fit_rejects_features_that_do_not_match_feature_dim(city):
    x, y = city["train"]
    with pytest.raises(DataError, match="9 features but feature_dim is 10"):
        fit(x[:, :9], y, None, None, NOTEBOOK_HP)


# --- channels and train() --------------------------------------------------------------


def test_train_reports_linear_learner_metrics_in_label_units(trained):
    metrics = trained.metrics
    for channel in ("validation", "test"):
        for name in ("objective_loss", "absolute_loss", "mse", "rmse", "r2"):
            assert f"{channel}:{name}" in metrics
    assert "train:objective_loss" in metrics
    # Dollars, not standardised units: MAE near sigma * sqrt(2/pi) ~ 4,000.
    assert 3000 < metrics["test:absolute_loss"] < 5500
    assert metrics["test:objective_loss"] == metrics["test:absolute_loss"]
    assert metrics["test:rmse"] == pytest.approx(math.sqrt(metrics["test:mse"]))
    assert metrics["test:r2"] > 0.99
    assert 1 <= trained.epochs_run <= 10
    assert trained.best_candidate.index in range(32)


def test_artifact_is_one_json_document_in_a_tarball(trained):
    # GIVEN the written model.tar.gz
    assert trained.model_path.name == "model.tar.gz"
    with tarfile.open(trained.model_path) as tar:
        assert tar.getnames() == ["linear-learner.json"]
        document = json.load(tar.extractfile("linear-learner.json"))  # type: ignore[arg-type]
    # THEN it records format, weights, normalisation, hyperparameters and metrics
    assert (document["format"], document["format_version"]) == ("citymodels-linear-learner", 1)
    assert document["feature_dim"] == 10 and len(document["weights"]) == 10
    assert document["loss"] == "absolute_loss" and document["predictor_type"] == "regressor"
    assert document["hyperparameters"]["mini_batch_size"] == 100
    assert document["metrics"] == trained.metrics
    assert document["epochs_run"] == trained.epochs_run
    assert set(document["normalization"]) == {
        "feature_mean",
        "feature_scale",
        "label_mean",
        "label_scale",
    }


def test_loaded_model_predicts_like_the_trained_one(trained, city, tmp_path):
    x_test = city["test"][0].tolist()
    expected = trained.model.predict(x_test)
    extracted = tmp_path / "extracted"
    with tarfile.open(trained.model_path) as tar:
        extract_safely(tar, extracted)
    for source in (
        trained.model_path,
        str(trained.model_path),
        trained.model_path.read_bytes(),
        extracted,
        extracted / "linear-learner.json",
        trained.model_path.parent,
    ):
        assert load_model(source).predict(x_test) == expected


def test_weights_are_in_original_units_so_prediction_is_a_dot_product(trained, city):
    model = load_model(trained.model_path)
    x = city["test"][0]
    manual = x @ np.asarray(model.weights) + model.bias
    assert model.predict(x.tolist()) == pytest.approx(manual.tolist(), rel=1e-12)


def test_channels_read_every_file_with_crlf_blank_lines_and_trailing_newline(tmp_path, city):
    x, y = city["train"]
    write_csv(tmp_path / "train" / "part-1.csv", x[:300], y[:300], newline="\r\n")
    write_csv(tmp_path / "train" / "part-2" / "rows.csv", x[300:], y[300:])
    (tmp_path / "train" / ".hidden").write_text("not,data\n")
    with (tmp_path / "train" / "part-1.csv").open("a") as handle:
        handle.write("\r\n\r\n")
    features, labels = read_channel(tmp_path / "train", "train", 10)
    # Files are read in path order: part-1.csv, then part-2/rows.csv.
    assert features == pytest.approx(x)
    assert labels == pytest.approx(y)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,2,3\n4,5,x\n", "line 2, column 3: 'x' is not a number"),
        ("1,2,3\n4,5\n", "line 2: expected 3 values .*got 2"),
        ("PRICE,A,B\n1,2,3\n", "line 1, column 1: 'PRICE' is not a number .*header"),
        ("1,2,3\n\n4,nan,6\n", "line 3, column 2: 'nan' is not finite"),
        ("1,2,3\n4,,6\n", "line 2, column 2: '' is not a number"),
    ],
)
def test_bad_channel_data_is_reported_with_channel_file_and_line(tmp_path, content, message):
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "val.csv").write_text(content)
    with pytest.raises(DataError, match=f"channel 'validation', file val.csv {message}"):
        read_channel(tmp_path / "validation", "validation")


def test_channel_width_must_match_feature_dim(tmp_path):
    (tmp_path / "train.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"line 1: expected 11 values .label and 10 features"):
        read_channel(tmp_path / "train.csv", "train", 10)


def test_empty_channel_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="channel 'train': no data files"):
        read_channel(tmp_path / "train", "train")


def test_train_requires_the_train_channel_and_rejects_unknown_ones(tmp_path, city):
    write_csv(tmp_path / "v.csv", *city["validation"])
    with pytest.raises(DataError, match="train channel is required"):
        train({"validation": tmp_path / "v.csv"}, NOTEBOOK_HP, tmp_path / "model")
    with pytest.raises(DataError, match="unknown channel 'eval'"):
        train({"train": tmp_path / "v.csv", "eval": tmp_path / "v.csv"}, NOTEBOOK_HP, tmp_path)


# --- inference -----------------------------------------------------------------------


def test_invoke_answers_csv_with_linear_learner_json(trained):
    model = trained.model
    body, content_type = model.invoke(
        b"2005,2500,3,2,1.1,2,1,0,0,1\r\n2010,3000,4,3,1.5,3,0,1,1,0\r\n",
        "text/csv",
        "application/json",
    )
    assert content_type == "application/json"
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    assert scores == model.predict([ROW, [2010, 3000, 4, 3, 1.5, 3, 0, 1, 1, 0]])


def test_invoke_answers_json_instances(trained):
    model = trained.model
    request = json.dumps({"instances": [{"features": ROW}, {"features": ROW}]}).encode()
    body, content_type = model.invoke(request, "application/json; charset=utf-8", "*/*")
    assert content_type == "application/json"
    assert json.loads(body) == {"predictions": [{"score": model.predict([ROW])[0]}] * 2}


def test_invoke_can_answer_jsonlines(trained):
    body, content_type = trained.model.invoke(
        b"2005,2500,3,2,1.1,2,1,0,0,1", "text/csv", "application/jsonlines"
    )
    assert content_type == "application/jsonlines"
    assert [json.loads(line) for line in body.splitlines()] == [
        {"score": trained.model.predict([ROW])[0]}
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"1,2,3\n", "text/csv", "row 1: expected 10 features, got 3"),
        (b"2005,2500,3,2,1.1,2,1,0,0,1\n1,2\n", "text/csv", "row 2: expected 10 features, got 2"),
        (b"9,2005,2500,3,2,1.1,2,1,0,0,1", "text/csv", "got 11 .send features only, no label"),
        (b"2005,2500,3,2,1.1,2,y,0,0,1", "text/csv", "row 1: every feature must be a number"),
        (b"2005,2500,3,2,1.1,2,nan,0,0,1", "text/csv", "row 1: features must be finite"),
        (b"", "text/csv", "no rows"),
        (
            b'{"instances": [{"features": [1, 2]}]}',
            "application/json",
            "instance 1: expected 10 features, got 2",
        ),
        (
            b'{"instances": [{"features": [1,2,3,4,5,6,7,8,9,true]}]}',
            "application/json",
            "instance 1: every feature must be a number",
        ),
        (b'{"rows": []}', "application/json", 'must be ."instances"'),
        (b"{", "application/json", "not valid JSON"),
        (b"1,2", "application/x-recordio-protobuf", "unsupported content type"),
    ],
)
def test_bad_requests_raise_inference_error_with_precise_message(
    trained, body, content_type, message
):
    with pytest.raises(InferenceError, match=message) as caught:
        trained.model.invoke(body, content_type, "application/json")
    assert isinstance(caught.value, ValueError)


def test_unsupported_accept_is_an_inference_error(trained):
    with pytest.raises(InferenceError, match="unsupported accept 'text/html'"):
        trained.model.invoke(b"2005,2500,3,2,1.1,2,1,0,0,1", "text/csv", "text/html")


def test_predict_checks_row_width(trained):
    with pytest.raises(InferenceError, match="row 2: expected 10 features, got 9"):
        trained.model.predict([ROW, ROW[:9]])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "xgboost"}, "not a local Linear Learner model"),
        ({"format_version": 99}, "unsupported model format_version 99"),
        ({"feature_dim": 3}, "feature_dim 3 does not match 10 weights"),
        ({"weights": "abc"}, "weights must be a list"),
    ],
)
def test_load_model_rejects_other_formats(trained, change, message):
    document = {**trained.model.to_json_dict(), **change}
    with pytest.raises(ModelFormatError, match=message):
        load_model(json.dumps(document).encode())


def test_load_model_rejects_a_tarball_without_the_model(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("model_algo-1")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ModelFormatError, match=r"no linear-learner.json"):
        load_model(buffer.getvalue())


# --- the training container --------------------------------------------------------


def make_ml_root(
    root: Path,
    city: City,
    hyperparameters: dict[str, str],
    content_type: str = "text/csv;label_size=1",
) -> Path:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(
        json.dumps(
            {
                name: {"ContentType": content_type, "TrainingInputMode": "File"}
                for name in ("train", "validation", "test")
            }
        )
    )
    for name, (x, y) in city.items():
        write_csv(root / "input" / "data" / name / f"{name}.csv", x, y)
    return root


def test_container_trains_writes_model_metrics_and_logs_them(tmp_path, city, capsys):
    root = make_ml_root(tmp_path, city, NOTEBOOK_HP)
    # WHEN the job runs
    status = run_training(root)
    # THEN it succeeds, writes the artifact and the final metrics list
    assert status == 0
    assert load_model(root / "model" / "model.tar.gz").feature_dim == 10
    final = json.loads((root / "output" / "metrics.json").read_text())
    names = {entry["MetricName"]: entry["Value"] for entry in final}
    assert {"validation:absolute_loss", "test:mse", "test:rmse", "test:r2"} <= set(names)
    assert not (root / "output" / "failure").exists()
    # AND Linear Learner's metric-definition regexes find the values in the log
    log = capsys.readouterr().out
    found = re.search(r"#quality_metric: host=\S+, validation absolute_loss <loss>=(\S+)", log)
    assert found and float(found.group(1)) == names["validation:absolute_loss"]
    metrics_line = next(line for line in log.splitlines() if line.startswith("#metrics "))
    assert "test:rmse" in json.loads(metrics_line.removeprefix("#metrics "))["Metrics"]


def test_container_rejects_channels_that_are_not_csv(tmp_path, city):
    root = make_ml_root(tmp_path, city, NOTEBOOK_HP, content_type="application/x-recordio-protobuf")
    assert run_training(root) == 1
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("ClientError: channel ")
    assert "'application/x-recordio-protobuf'" in failure and "text/csv" in failure
    assert not (root / "model" / "model.tar.gz").exists()


def test_container_reports_bad_hyperparameters_as_the_failure_reason(tmp_path, city):
    root = make_ml_root(tmp_path, city, {**NOTEBOOK_HP, "epochs": "zero"})
    assert run_training(root) == 1
    assert "hyperparameter epochs='zero'" in (root / "output" / "failure").read_text()


def test_container_reports_bad_data_naming_the_file(tmp_path, city):
    root = make_ml_root(tmp_path, city, NOTEBOOK_HP)
    (root / "input" / "data" / "train" / "broken.csv").write_text("1,2,3\n")
    assert run_training(root) == 1
    assert "channel 'train', file broken.csv line 1" in (root / "output" / "failure").read_text()


def test_container_command_line(tmp_path, city, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--ml-root" in capsys.readouterr().out
    root = make_ml_root(tmp_path, city, NOTEBOOK_HP)
    assert main(["--ml-root", str(root)]) == 0
    assert (root / "model" / "model.tar.gz").is_file()
