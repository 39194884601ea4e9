import json
from collections import Counter

import numpy as np
import pytest
from tests.conftest import write_csv

from tuneloop.data.tabular import (
    TableExamples,
    TabularPreprocessor,
    TargetEncoder,
    detect_column_kinds,
    infer_task,
    load_table_examples,
    split_table,
)
from tuneloop.errors import DataError

PEOPLE = ["age", "color", "plan", "target"]


def people_csv(tmp_path, name="train.csv", rows=None):
    """Numeric 'age' with missing cells, categorical 'color' with a missing cell, a constant 'plan'."""
    rows = rows or [["30", "red", "basic", "yes"], ["NA", "blue", "basic", "no"], ["50", "red", "basic", "yes"],
                    ["", "green", "basic", "no"], ["40", "", "basic", "yes"], ["20", "blue", "basic", "no"]]
    return write_csv(tmp_path / name, PEOPLE, rows)


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    path = tmp_path_factory.mktemp("wine") / "wine.csv"
    sklearn_datasets.load_wine(as_frame=True).frame.to_csv(path)  # with pandas' unnamed index column first
    return path


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.csv"
    sklearn_datasets.load_diabetes(as_frame=True, scaled=False).frame.to_csv(path, index=False)
    return path


def test_wine_is_classification_with_standardized_numeric_features(wine_csv):
    data = load_table_examples(wine_csv)
    assert data.target_column == "target" and len(data) == 178
    assert infer_task(data.targets) == "classification"
    train, val = split_table(data, 0.25, seed=0, task="classification")
    assert Counter(_labels(val)) == {"0": 15, "1": 18, "2": 12}
    pre = TabularPreprocessor().fit(train)
    assert pre.kinds[""] == "ignored"  # pandas' row index
    assert pre.width == 13 and pre.feature_names[0] == "alcohol" and "" not in pre.feature_names
    x = pre.transform(train.columns, source=train.source, locations=train.locations)
    assert x.dtype == np.float32 and x.shape == (len(train), 13)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-4)
    assert pre.transform(val.columns, source=val.source).shape == (len(val), 13)
    encoder = TargetEncoder("classification").fit(train)
    assert encoder.classes == ["0", "1", "2"] and encoder.outputs == 3
    ids = encoder.encode(val)
    assert list(encoder.inverse(ids)) == _labels(val)


def test_diabetes_whole_number_targets_with_many_values_are_regression(diabetes_csv):
    data = load_table_examples(diabetes_csv)
    assert all(float(t).is_integer() for t in data.targets)
    assert infer_task(data.targets) == "regression"
    train, val = split_table(data, 0.2, seed=3, task="regression")
    encoder = TargetEncoder("regression").fit(train)
    y = encoder.encode(train)
    assert y.dtype == np.float32 and abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-4
    original = np.array([float(t) for t in val.targets])
    np.testing.assert_allclose(encoder.inverse(encoder.encode(val)), original, rtol=1e-5)
    kinds = TabularPreprocessor().fit(train).kinds
    assert kinds["sex"] == "numeric" and set(kinds.values()) == {"numeric"}


def test_numeric_categorical_and_missing_values(tmp_path):
    data = load_table_examples(people_csv(tmp_path))
    assert list(data.columns) == ["age", "color", "plan"]
    pre = TabularPreprocessor().fit(data)
    assert pre.kinds == {"age": "numeric", "color": "categorical", "plan": "ignored"}
    assert pre.feature_names == ["age", "age (missing)", "color=blue", "color=green", "color=red", "color=(other)"]
    x = pre.transform(data.columns, source=data.source)
    ages = np.array([30, 50, 40, 20])  # mean 35, std sqrt(125)
    np.testing.assert_allclose(x[[0, 2, 4, 5], 0], (ages - 35) / np.sqrt(125), rtol=1e-6)
    assert x[1, 0] == 0 and x[3, 0] == 0  # missing -> the training mean
    assert x[:, 1].tolist() == [0, 1, 0, 1, 0, 0]
    assert x[:, 2:].tolist()[:5] == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_missing_tokens_do_not_make_a_numeric_column_categorical():
    kinds = detect_column_kinds({"a": ["1", "NA", "nan", "NULL", "", None, float("nan"), "2.5"],
                                 "b": ["1", "?", "2", "3", "1", "2", "3", "1"]})
    assert kinds == {"a": "numeric", "b": "categorical"}


def test_no_indicator_when_training_had_no_missing_values(tmp_path):
    data = load_table_examples(write_csv(tmp_path / "t.csv", ["x", "y"], [["1", "a"], ["3", "b"]]))
    pre = TabularPreprocessor().fit(data)
    assert pre.feature_names == ["x"]
    assert pre.transform({"x": ["2", "NA"]}, source="p.csv").tolist() == [[0.0], [0.0]]


def test_unseen_and_rare_categories_go_to_the_other_slot(tmp_path):
    rows = [[c, "1"] for c in ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"]] + [["b", "0"]]
    data = load_table_examples(write_csv(tmp_path / "t.csv", ["letter", "y"], rows))
    pre = TabularPreprocessor(max_categories=2).fit(data)
    assert pre.feature_names == ["letter=a", "letter=b", "letter=(other)"]
    x = pre.transform({"letter": ["a", "c", "d", "zzz", "b"]}, source="p.csv")
    assert x.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 0]]


def test_id_like_and_constant_columns_are_ignored():
    n = 25
    kinds = detect_column_kinds({
        "counter": [str(100 + i + i // 3) for i in range(n)],  # a row counter, every 4th row split off
        "customer_id": [str(7 * i * i + 3) for i in range(n)],  # unique whole numbers under an id name
        "name": [f"person {i}" for i in range(n)],  # unique text
        "constant": ["x"] * n,
        "empty": ["NA"] * n,
        "height": [str(150 + 3 * i) for i in range(n)],  # unique, but spread wider than a row counter
        "weight": [f"{60 + i / 3:.3f}" for i in range(n)],  # unique fractions: a measurement
    })
    assert kinds == {"counter": "ignored", "customer_id": "ignored", "name": "ignored", "constant": "ignored",
                     "empty": "ignored", "height": "numeric", "weight": "numeric"}


def test_distinct_values_in_a_small_table_are_not_taken_for_ids():
    kinds = detect_column_kinds({"rooms": [str(i) for i in range(19)], "city": [f"c{i}" for i in range(19)]})
    assert kinds == {"rooms": "numeric", "city": "categorical"}


def test_kinds_can_be_overridden(tmp_path):
    data = load_table_examples(people_csv(tmp_path))
    pre = TabularPreprocessor(kinds={"age": "categorical", "color": "ignored"}).fit(data)
    assert pre.feature_names == ["age=20", "age=30", "age=40", "age=50", "age=(other)"]


def test_unparseable_number_at_predict_names_file_row_and_column(tmp_path):
    pre = TabularPreprocessor().fit(load_table_examples(people_csv(tmp_path)))
    predict = load_table_examples(write_csv(tmp_path / "predict.csv", ["color", "age"],
                                            [["red", "31"], ["blue", "thirty"]]), labelled=False)
    with pytest.raises(DataError) as error:
        pre.transform(predict.columns, source=predict.source, locations=predict.locations)
    message = str(error.value)
    assert f"{tmp_path / 'predict.csv'}, line 3, column 'age': expected a number, found 'thirty'" in message
    assert "Column 'age' is numeric in the training data" in message


def test_rows_are_counted_from_one_without_locations(tmp_path):
    pre = TabularPreprocessor().fit(load_table_examples(people_csv(tmp_path)))
    with pytest.raises(DataError, match=r"^new\.parquet, row 2, column 'age': expected a number, found '12,5'"):
        pre.transform({"age": ["1", "12,5"], "color": ["red", "red"]}, source="new.parquet")


def test_missing_feature_columns_are_listed(tmp_path):
    pre = TabularPreprocessor().fit(load_table_examples(people_csv(tmp_path)))
    with pytest.raises(DataError, match=r"^p\.csv: missing feature columns the model was trained with: age, color\. "
                                        r"The file has columns: plan, height\."):
        pre.transform({"plan": ["x"], "height": ["1"]}, source="p.csv")


def test_missing_target_names_file_row_and_column(tmp_path):
    path = people_csv(tmp_path, rows=[["30", "red", "b", "yes"], ["31", "red", "b", "NA"], ["32", "red", "b", "no"]])
    with pytest.raises(DataError, match=r"train\.csv, line 3, column 'target': the target is missing.*1 of 3 rows"):
        load_table_examples(path)


def test_target_column_not_found_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "price"], [["1", "2"]])
    with pytest.raises(DataError, match=r"found no target column .*The file has columns: a, price\. .*--target-col"):
        load_table_examples(path)
    loaded = load_table_examples(path, "price")
    assert list(loaded.columns) == ["a"] and loaded.targets == ["2"]
    with pytest.raises(DataError, match=r"no column named 'cost' for the target\. The file has columns: a, price"):
        load_table_examples(path, "cost")


@pytest.mark.parametrize(("targets", "task"), [
    (["cat", "dog", "cat"], "classification"),
    ([True, False, True], "classification"),
    (["1.5", "2", "3"], "regression"),
    ([0.1 * i for i in range(100)], "regression"),
    (["0", "1", "1", "0"], "classification"),  # two values: always classes
    ([i % 3 for i in range(15)], "classification"),  # 3 values, 5 rows each
    ([i % 3 for i in range(14)], "regression"),  # 3 values, under 5 rows each
    ([i % 21 for i in range(1000)], "regression"),  # more than 20 values
    ([float(i % 20) for i in range(1000)], "classification"),  # 20 values, written as 0.0, 1.0, ...
])
def test_infer_task(targets, task):
    assert infer_task(targets) == task


def test_preprocessor_and_encoders_round_trip_through_json(tmp_path):
    data = load_table_examples(people_csv(tmp_path))
    pre = TabularPreprocessor().fit(data)
    again = TabularPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    columns = {"age": ["1.25", "NA", "99"], "color": ["red", "purple", None]}
    assert again.feature_names == pre.feature_names and again.kinds == pre.kinds
    assert np.array_equal(again.transform(columns, source="p"), pre.transform(columns, source="p"))
    for task, targets in (("classification", None), ("regression", ["1.5", "2", "7", "3", "0.25", "9"])):
        examples = data if targets is None else TableExamples(data.columns, targets, data.locations, data.source)
        encoder = TargetEncoder(task).fit(examples)
        copy = TargetEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
        assert np.array_equal(copy.encode(examples), encoder.encode(examples))
        assert np.array_equal(copy.inverse(encoder.encode(examples)), encoder.inverse(encoder.encode(examples)))


def test_unseen_label_is_named(tmp_path):
    encoder = TargetEncoder("classification").fit(load_table_examples(people_csv(tmp_path)))
    val = load_table_examples(people_csv(tmp_path, "val.csv", rows=[["1", "red", "b", "yes"],
                                                                     ["2", "red", "b", "maybe"]]))
    with pytest.raises(DataError, match=r"val\.csv: target values not in the training data: maybe \(line 3\)\. "
                                        r"Training classes are: no, yes\."):
        encoder.encode(val)


def test_regression_target_that_is_not_a_number_names_row(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["x", "y"], [["1", "2.5"], ["2", "high"]])
    with pytest.raises(DataError, match=r"t\.csv, line 3, column 'y': expected a number, found 'high'"):
        TargetEncoder("regression").fit(load_table_examples(path))


def test_a_single_class_is_refused(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["x", "y"], [["1", "a"], ["2", "a"]])
    with pytest.raises(DataError, match="at least two classes"):
        TargetEncoder("classification").fit(load_table_examples(path))


def test_no_usable_feature_columns_says_why(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["c", "e", "y"], [["k", "", "1"], ["k", "NA", "0"]])
    with pytest.raises(DataError, match=r"no usable feature columns.*'c': every value is 'k'; "
                                        r"'e': every value is missing"):
        TabularPreprocessor().fit(load_table_examples(path))


def test_regression_split_is_seeded_and_disjoint():
    data = TableExamples({"x": list(range(50))}, [float(i) for i in range(50)], [f"line {i + 2}" for i in range(50)],
                         "d.csv")
    train, val = split_table(data, 0.2, seed=1, task="regression")
    assert len(val) == 10 and len(train) == 40
    assert set(train.columns["x"]).isdisjoint(val.columns["x"])
    assert train.targets == [float(x) for x in train.columns["x"]]  # rows stay whole
    assert split_table(data, 0.2, seed=1, task="regression")[1].columns == val.columns
    assert split_table(data, 0.2, seed=2, task="regression")[1].columns != val.columns


def test_stratified_split_refuses_a_class_with_one_row(tmp_path):
    data = load_table_examples(people_csv(tmp_path, rows=[["1", "r", "b", "a"], ["2", "r", "b", "a"],
                                                          ["3", "r", "b", "lonely"]]))
    with pytest.raises(DataError, match=r"class 'lonely' \(line 4\) has 1 example"):
        split_table(data, 0.3, seed=0, task="classification")


def test_fingerprint_changes_with_a_cell_or_a_target(tmp_path):
    data = load_table_examples(people_csv(tmp_path))
    same = load_table_examples(people_csv(tmp_path, "copy.csv"))
    assert data.fingerprint() == same.fingerprint() and len(data.fingerprint()) == 16
    changed_cell = TableExamples({**data.columns, "age": ["31", *data.columns["age"][1:]]}, data.targets,
                                 data.locations, data.source, data.target_column)
    changed_target = TableExamples(data.columns, ["no", *data.targets[1:]], data.locations, data.source,
                                   data.target_column)
    assert len({data.fingerprint(), changed_cell.fingerprint(), changed_target.fingerprint()}) == 3


def test_parquet_and_csv_cells_read_alike(tmp_path):
    pytest.importorskip("pyarrow")
    from tuneloop.data.files import write_table

    write_table(tmp_path / "t.parquet", {"n": [1.0, 2.0, None, 4.0], "c": [1, 2, 1, 2], "target": ["a", "b", "a", "b"]})
    write_csv(tmp_path / "t.csv", ["n", "c", "target"], [["1", "1", "a"], ["2", "2", "b"], ["", "1", "a"],
                                                         ["4", "2", "b"]])
    parquet, csv_ = load_table_examples(tmp_path / "t.parquet"), load_table_examples(tmp_path / "t.csv")
    assert parquet.fingerprint() == csv_.fingerprint()
    pre = TabularPreprocessor(kinds={"c": "categorical"}).fit(parquet)
    assert np.array_equal(pre.transform(csv_.columns, source=csv_.source),
                          pre.transform(parquet.columns, source=parquet.source))


def _labels(examples: TableExamples) -> list[str]:
    return [str(t) for t in examples.targets]
