"""Flywheel's predictive models as every service sees them: model specs and gates (`spec`), metrics
(`metrics`), feature encoding (`encoding`), the `flywheel.predictive/v1` artifact (`artifact`) and
scoring it (`scoring`, the only module that needs torch)."""
