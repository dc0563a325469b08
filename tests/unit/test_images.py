"""`citymodels images` with the real SageMaker SDK (the sdk extra, in every test venv).

The SDK's image table ships inside the package: no network is needed. The CLI's
own behaviour (output, errors, a missing SDK) is tested with a stand-in in test_cli.py;
this checks that the pinned SDK imports and answers on this Python.
"""

from __future__ import annotations

import pytest

from citymodels_devkit.images import ImagesError, lookup_images


def test_the_pinned_sdk_gives_both_images_for_a_region() -> None:
    images = lookup_images("eu-west-1")
    assert images.sklearn == (
        "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
    )
    assert images.linear_learner == "438346466558.dkr.ecr.eu-west-1.amazonaws.com/linear-learner:1"


def test_other_partitions_get_their_own_registry_domain() -> None:
    images = lookup_images("cn-north-1")
    assert ".dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-scikit-learn:1.2-1-cpu-py3" in (
        images.sklearn
    )


def test_an_unknown_region_is_a_clear_error() -> None:
    with pytest.raises(ImagesError, match="mars-1"):
        lookup_images("mars-1")
