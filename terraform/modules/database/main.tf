# RDS PostgreSQL: the control-plane store (tenants, keys, policies, limits, the change feed
# read with LISTEN/NOTIFY) and metered usage. Encrypted with its own KMS key, automated
# backups with point-in-time recovery, Multi-AZ and deletion protection per environment.
# Only the security groups in var.client_security_group_ids reach it.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  family = "postgres${split(".", var.engine_version)[0]}"
  # Generated: upper/lower/digits only, so the URL needs no escaping.
  store_url = format(
    "postgres://%s:%s@%s:%d/%s%s",
    var.username,
    random_password.master.result,
    aws_db_instance.this.address,
    aws_db_instance.this.port,
    var.database_name,
    var.require_tls ? "?sslmode=require" : "",
  )
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
}

resource "aws_kms_key" "this" {
  description             = "${var.name} PostgreSQL storage, Performance Insights and store URL secret"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json

  tags = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}-database"
  target_key_id = aws_kms_key.this.key_id
}

# ---------------------------------------------------------------------------------------
# Network access: only the listed clients, only 5432
# ---------------------------------------------------------------------------------------

resource "aws_security_group" "this" {
  name        = "${var.name}-postgres"
  description = "PostgreSQL of ${var.name}: reachable only from the tenantgate services"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-postgres" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "from_clients" {
  for_each = var.client_security_group_ids

  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_egress_rule" "clients_to_db" {
  for_each = var.client_security_group_ids

  security_group_id            = each.value
  description                  = "${each.key} to PostgreSQL"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.this.id
}

resource "aws_db_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids

  tags = var.tags
}

# ---------------------------------------------------------------------------------------
# Instance
# ---------------------------------------------------------------------------------------

resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.name}-"
  family      = local.family
  description = "${var.name} PostgreSQL"

  parameter {
    name  = "rds.force_ssl"
    value = var.require_tls ? "1" : "0"
  }

  # Slow statements and DDL in the postgresql log (exported to CloudWatch Logs).
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_lock_waits"
    value = "1"
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "random_password" "master" {
  length  = 40
  special = false
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_157:Multi-AZ is var.multi_az: true in staging and prod (environments/*/variables.tf defaults), false only in dev to halve its cost.
  #checkov:skip=CKV_AWS_293:Deletion protection is var.deletion_protection: true in staging and prod, false in dev so the environment can be torn down.
  identifier     = var.name
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = var.instance_class

  db_name  = var.database_name
  username = var.username
  password = random_password.master.result
  port     = 5432

  allocated_storage     = var.allocated_storage_gb
  max_allocated_storage = var.max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.this.arn

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  publicly_accessible    = false
  multi_az               = var.multi_az
  ca_cert_identifier     = "rds-ca-rsa2048-g1"
  parameter_group_name   = aws_db_parameter_group.this.name

  backup_retention_period   = var.backup_retention_days
  backup_window             = var.backup_window
  maintenance_window        = var.maintenance_window
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"

  auto_minor_version_upgrade          = true
  allow_major_version_upgrade         = false
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.this.arn
  performance_insights_retention_period = 7
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.monitoring.arn

  tags = var.tags

  depends_on = [aws_iam_role_policy_attachment.monitoring]
}

# ---------------------------------------------------------------------------------------
# The store URL, as tenantgate reads it (TENANTGATE__STORE__URL)
# ---------------------------------------------------------------------------------------

resource "aws_secretsmanager_secret" "store_url" {
  #checkov:skip=CKV2_AWS_57:The password is embedded in a URL tenantgate reads at start; a Lambda rotation would break running tasks. Rotation is a runbook step (docs/operations.md, "Rotating the database password").
  name_prefix             = "${var.name}/store-url-"
  description             = "TENANTGATE__STORE__URL of ${var.name}"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "store_url" {
  secret_id     = aws_secretsmanager_secret.store_url.id
  secret_string = local.store_url
}
