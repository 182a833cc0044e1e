# ElastiCache (Redis OSS) replication group for the fleet's shared rate limits
# ([ratelimit] backend = "redis"): encrypted at rest with its own KMS key, TLS in transit,
# an AUTH token, a replica with automatic failover when num_cache_clusters > 1.
# Only the proxy fleet's security group reaches it.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  replicated = var.num_cache_clusters > 1
  # ElastiCache names the nodes <group id>-001, -002, ...
  member_clusters = [for i in range(var.num_cache_clusters) : format("%s-%03d", var.name, i + 1)]
  scheme          = var.transit_encryption_mode == "required" ? "rediss" : "redis"
  redis_url = format(
    "%s://:%s@%s:%d",
    local.scheme,
    random_password.auth_token.result,
    aws_elasticache_replication_group.this.primary_endpoint_address,
    aws_elasticache_replication_group.this.port,
  )
  region = data.aws_region.current.region
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
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
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
      values   = ["arn:${data.aws_partition.current.partition}:logs:${local.region}:${data.aws_caller_identity.current.account_id}:log-group:/aws/elasticache/${var.name}/*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name} Redis data at rest, logs and URL secret"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json

  tags = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}-cache"
  target_key_id = aws_kms_key.this.key_id
}

# ---------------------------------------------------------------------------------------
# Network access: only the listed clients, only 6379
# ---------------------------------------------------------------------------------------

resource "aws_security_group" "this" {
  name        = "${var.name}-redis"
  description = "Redis of ${var.name}: reachable only from the tenantgate proxy fleet"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-redis" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "from_clients" {
  for_each = var.client_security_group_ids

  security_group_id            = aws_security_group.this.id
  description                  = "Redis from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_egress_rule" "clients_to_redis" {
  for_each = var.client_security_group_ids

  security_group_id            = each.value
  description                  = "${each.key} to Redis"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.this.id
}

resource "aws_elasticache_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids

  tags = var.tags
}

# ---------------------------------------------------------------------------------------
# Replication group
# ---------------------------------------------------------------------------------------

resource "random_password" "auth_token" {
  length  = 64
  special = false
}

resource "aws_cloudwatch_log_group" "this" {
  for_each = toset(["slow-log", "engine-log"])

  name              = "/aws/elasticache/${var.name}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn

  tags = var.tags
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id = var.name
  description          = "${var.name} shared rate limits"

  engine               = "redis"
  engine_version       = var.engine_version
  node_type            = var.node_type
  num_cache_clusters   = var.num_cache_clusters
  port                 = 6379
  parameter_group_name = "default.redis${split(".", var.engine_version)[0]}"

  subnet_group_name  = aws_elasticache_subnet_group.this.name
  security_group_ids = [aws_security_group.this.id]

  automatic_failover_enabled = local.replicated
  multi_az_enabled           = local.replicated

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this.arn
  transit_encryption_enabled = true
  transit_encryption_mode    = var.transit_encryption_mode
  auth_token                 = random_password.auth_token.result
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit   = var.snapshot_retention_days
  snapshot_window            = "02:00-03:00"
  maintenance_window         = "sun:05:30-sun:06:30"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.this["slow-log"].name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.this["engine-log"].name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "engine-log"
  }

  tags = var.tags
}

# ---------------------------------------------------------------------------------------
# The Redis URL, as tenantgate reads it (TENANTGATE__REDIS__URL)
# ---------------------------------------------------------------------------------------

resource "aws_secretsmanager_secret" "redis_url" {
  #checkov:skip=CKV2_AWS_57:The AUTH token is set on the replication group by Terraform (auth_token_update_strategy ROTATE keeps old and new valid together); a Lambda rotation would fight that. Rotation is a runbook step (docs/operations.md, "Rotating the Redis AUTH token").
  name_prefix             = "${var.name}/redis-url-"
  description             = "TENANTGATE__REDIS__URL of ${var.name}"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "redis_url" {
  secret_id     = aws_secretsmanager_secret.redis_url.id
  secret_string = local.redis_url
}
