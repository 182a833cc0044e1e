# Platform secrets, generated once and kept in Secrets Manager under this module's KMS key.
# ECS injects them as environment variables at task start (the execution role reads them;
# the running containers' task roles cannot).
#
#   admin_token     TENANTGATE_ADMIN_TOKEN                the platform admin's bearer token
#   secret_key      TENANTGATE__ADMIN__SECRET_KEY         seals the login and tenant-assertion signing keys at rest (admin and proxies)
#   api_key_pepper  TENANTGATE__SECURITY__API_KEY_PEPPER  HMAC key of the API key digests (same on admin and proxies)
#
# Rotation is manual and ordered (docs/operations.md): the pepper cannot rotate without
# re-issuing every API key, and the secret key must keep opening the sealed keys.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region

  platform_secrets = {
    admin_token    = "Platform admin bearer token (TENANTGATE_ADMIN_TOKEN)"
    secret_key     = "Key sealing the login and tenant-assertion signing keys (TENANTGATE__ADMIN__SECRET_KEY)"
    api_key_pepper = "HMAC pepper of the API key digests (TENANTGATE__SECURITY__API_KEY_PEPPER)"
  }
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A KMS key policy: Resource "*" is this key alone, and the account-root statement is AWS's default key policy (it delegates to IAM policies).
  #checkov:skip=CKV_AWS_111:A KMS key policy: Resource "*" is this key alone; write actions are limited to the account root and, by encryption context, to CloudWatch Logs.
  #checkov:skip=CKV_AWS_356:A KMS key policy: Resource "*" is this key alone (key policies cannot name their own ARN before the key exists).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsUse"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:aws-waf-logs-${var.name}"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name} platform secrets and WAF logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json

  tags = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}-compute"
  target_key_id = aws_kms_key.this.key_id
}

resource "random_password" "platform" {
  for_each = local.platform_secrets

  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "platform" {
  #checkov:skip=CKV2_AWS_57:Rotating these needs an ordered, manual procedure (docs/operations.md, "Rotating platform secrets"); an automatic Lambda rotation would break API key digests or sealed signing keys.
  for_each = local.platform_secrets

  name_prefix             = "${var.name}/${replace(each.key, "_", "-")}-"
  description             = "${each.value} of ${var.name}"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "platform" {
  for_each = local.platform_secrets

  secret_id     = aws_secretsmanager_secret.platform[each.key].id
  secret_string = random_password.platform[each.key].result

  # Rotated by the runbook (put-secret-value), not by Terraform.
  lifecycle {
    ignore_changes = [secret_string]
  }
}
