"""Translate ``template.yaml`` to plain CloudFormation with the SAM translator, offline.

cfn-lint 1.x checks the AWS::Serverless resources against SAM's schemas but no longer
runs the transform, so it cannot see what SAM generates (the rules, the event invoke
configs, the roles) nor whether a ``!GetAtt`` on a generated resource (our queue policy
names the rules ``OnboardFunctionUpload``...) resolves. This script runs the same
translator ``sam deploy`` relies on and writes the result, which ``make template-check``
then lints as an ordinary CloudFormation template.

Runs with the Python of ``.venv-sam`` (samtranslator is an aws-sam-cli dependency)::

    .venv-sam/bin/python tools/translate_template.py template.yaml OUT.json

Local ``CodeUri``/``ContentUri`` paths are replaced with placeholder S3 URIs first, as
``sam validate`` does, because the translator accepts only S3 locations. AWS managed
policies come from the translator's bundled map; nothing calls AWS.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from boto3.session import Session
from samcli.yamlhelper import yaml_parse  # type: ignore[import-not-found]
from samtranslator.parser.parser import Parser  # type: ignore[import-not-found]
from samtranslator.translator.translator import Translator  # type: ignore[import-not-found]

PLACEHOLDER_BUCKET = "placeholder-bucket"
REGION = "us-east-1"
"""The translator resolves pseudo parameters for ARNs it builds; any region will do."""
_LOCAL_URI_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}


def offline_policy_map() -> dict[str, str]:
    """Refuse to call IAM: the translator's bundled managed-policy map must suffice."""
    raise RuntimeError(
        "the template names an AWS managed policy the SAM translator does not bundle; "
        "use its ARN instead (this check runs offline)"
    )


def with_placeholder_uris(template: dict[str, Any]) -> dict[str, Any]:
    """Return ``template`` with every local code path replaced by a placeholder S3 URI."""
    for name, resource in template.get("Resources", {}).items():
        prop = _LOCAL_URI_PROPERTIES.get(resource.get("Type", ""))
        properties = resource.get("Properties", {})
        if prop and isinstance(properties.get(prop), str):
            properties[prop] = f"s3://{PLACEHOLDER_BUCKET}/{name}.zip"
    return template


def translate(template_text: str) -> dict[str, Any]:
    """Return the CloudFormation template SAM generates from ``template_text``."""
    template = with_placeholder_uris(yaml_parse(template_text))
    translator = Translator(
        managed_policy_map=None,
        sam_parser=Parser(),
        plugins=[],
        boto_session=Session(region_name=REGION),
    )
    result: dict[str, Any] = translator.translate(
        sam_template=template, parameter_values={}, get_managed_policy_map=offline_policy_map
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Translate argv[0] into argv[1] (JSON)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: translate_template.py TEMPLATE OUT.json", file=sys.stderr)
        return 2
    source, target = (Path(a) for a in args)
    # The translator warns about feature toggles it has no config for; not our concern.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    translated = translate(source.read_text(encoding="utf-8"))
    target.write_text(json.dumps(translated, indent=1, sort_keys=True), encoding="utf-8")
    resources = translated.get("Resources", {})
    print(f"{source} -> {target}: {len(resources)} CloudFormation resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
