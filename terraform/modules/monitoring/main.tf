# Log groups of the services, the alarm topic, the alarms and a dashboard.
#
# Where each signal comes from:
#   - 5xx rate, p99 latency, healthy hosts: the ALB's own metrics (AWS/ApplicationELB).
#   - 429 rate, change-propagation lag, rate-limiter breaker, metering flush failures:
#     the proxy's Prometheus metrics, scraped from 127.0.0.1:9090/metrics by the ADOT
#     sidecar of each proxy task and published as CloudWatch EMF under var.metrics_namespace
#     (see modules/compute, local.otel_config). Same names as in deploy/prometheus/.
#   - store health: the admin API's /health (503 when PostgreSQL does not answer) as
#     target health, plus RDS metrics; Redis health: ElastiCache metrics.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  t   = var.thresholds
  ns  = var.metrics_namespace
  env = var.environment

  log_groups = {
    proxy   = "/ecs/${var.name}/proxy"
    admin   = "/ecs/${var.name}/admin"
    demo    = "/ecs/${var.name}/demo-upstream"
    otel    = "/ecs/${var.name}/otel-collector"
    metrics = "/ecs/${var.name}/metrics"
  }
  account_arn = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
  region      = data.aws_region.current.region
}

# ---------------------------------------------------------------------------------------
# Encryption of the log groups and the alarm topic
# ---------------------------------------------------------------------------------------

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
      identifiers = [local.account_arn]
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
      values   = ["arn:${data.aws_partition.current.partition}:logs:${local.region}:${data.aws_caller_identity.current.account_id}:log-group:/ecs/${var.name}/*"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublish"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name} logs and alarm notifications"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json

  tags = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}-observability"
  target_key_id = aws_kms_key.this.key_id
}

resource "aws_cloudwatch_log_group" "this" {
  for_each = local.log_groups

  name              = each.value
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn

  tags = merge(var.tags, { Service = each.key })
}

# ---------------------------------------------------------------------------------------
# Alarm topic
# ---------------------------------------------------------------------------------------

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.this.arn

  tags = var.tags
}

data "aws_iam_policy_document" "alarms_topic" {
  statement {
    sid       = "CloudWatchPublishes"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alarms.arn]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_sns_topic_policy" "alarms" {
  arn    = aws_sns_topic.alarms.arn
  policy = data.aws_iam_policy_document.alarms_topic.json
}

resource "aws_sns_topic_subscription" "email" {
  for_each = toset(var.alarm_emails)

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

# ---------------------------------------------------------------------------------------
# Alarms (the same conditions as deploy/prometheus/tenantgate-alerts.yml)
# ---------------------------------------------------------------------------------------

# TenantGateHigh5xxRate: 5xx answered to clients (the proxy's 502/503/504 and the ALB's own)
# over all requests, in per cent.
resource "aws_cloudwatch_metric_alarm" "error_5xx_rate" {
  alarm_name          = "${var.name}-5xx-rate"
  alarm_description   = "More than ${local.t.error_5xx_percent}% of requests answered 5xx for 5 minutes. Runbook: docs/operations.md#tenantgatehigh5xxrate"
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.t.error_5xx_percent
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "rate"
    expression  = "IF(requests > 0, 100 * (FILL(target5xx, 0) + FILL(elb5xx, 0)) / requests, 0)"
    label       = "5xx %"
    return_data = true
  }

  metric_query {
    id = "requests"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      period      = 60
      stat        = "Sum"
      dimensions  = { LoadBalancer = var.alb_arn_suffix }
    }
  }

  metric_query {
    id = "target5xx"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      period      = 60
      stat        = "Sum"
      dimensions  = { LoadBalancer = var.alb_arn_suffix }
    }
  }

  metric_query {
    id = "elb5xx"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      period      = 60
      stat        = "Sum"
      dimensions  = { LoadBalancer = var.alb_arn_suffix }
    }
  }

  tags = var.tags
}

# TenantGateHighP99Latency: p99 of the proxy fleet's response time (proxy + upstream).
resource "aws_cloudwatch_metric_alarm" "p99_latency" {
  alarm_name          = "${var.name}-p99-latency"
  alarm_description   = "p99 response time of the proxy fleet above ${local.t.p99_latency_seconds}s for 10 minutes. Runbook: docs/operations.md#tenantgatehighp99latency"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "TargetResponseTime"
  extended_statistic  = "p99"
  period              = 60
  evaluation_periods  = 10
  datapoints_to_alarm = 8
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.t.p99_latency_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = {
    LoadBalancer = var.alb_arn_suffix
    TargetGroup  = var.proxy_target_group_arn_suffix
  }

  tags = var.tags
}

# TenantGateHigh429Rate: share of requests refused with 429 rate_limited across the fleet.
resource "aws_cloudwatch_metric_alarm" "rate_limited" {
  alarm_name          = "${var.name}-429-rate"
  alarm_description   = "More than ${local.t.rate_limited_percent}% of requests refused 429 rate_limited for 10 minutes. Runbook: docs/operations.md#tenantgatehigh429rate"
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.t.rate_limited_percent
  evaluation_periods  = 10
  datapoints_to_alarm = 10
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "rate"
    expression  = "IF(total > 0, 100 * FILL(limited, 0) / total, 0)"
    label       = "429 %"
    return_data = true
  }

  metric_query {
    id = "total"

    metric {
      namespace   = local.ns
      metric_name = "tenantgate_proxy_requests_total"
      period      = 60
      stat        = "Sum"
      dimensions  = { Environment = local.env }
    }
  }

  metric_query {
    id = "limited"

    metric {
      namespace   = local.ns
      metric_name = "tenantgate_proxy_requests_total"
      period      = 60
      stat        = "Sum"
      dimensions  = { Environment = local.env, code = "rate_limited" }
    }
  }

  tags = var.tags
}

# TenantGateChangeLagHigh: a revocation, suspension or policy change reached a proxy later
# than the contract's second. The lag gauge keeps its last value between changes, so it
# only counts in minutes when changes were applied.
resource "aws_cloudwatch_metric_alarm" "change_lag" {
  alarm_name          = "${var.name}-change-propagation-lag"
  alarm_description   = "A control-plane change reached a proxy more than ${local.t.change_lag_seconds}s after it was made. Runbook: docs/operations.md#tenantgatechangelaghigh"
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.t.change_lag_seconds
  evaluation_periods  = 3
  datapoints_to_alarm = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "late"
    expression  = "IF(FILL(applied, 0) > 0, lag, 0)"
    label       = "change lag while changes flow (s)"
    return_data = true
  }

  metric_query {
    id = "lag"

    metric {
      namespace   = local.ns
      metric_name = "tenantgate_proxy_change_lag_seconds"
      period      = 60
      stat        = "Maximum"
      dimensions  = { Environment = local.env }
    }
  }

  metric_query {
    id = "applied"

    metric {
      namespace   = local.ns
      metric_name = "tenantgate_proxy_changes_applied_total"
      period      = 60
      stat        = "Sum"
      dimensions  = { Environment = local.env }
    }
  }

  tags = var.tags
}

# TenantGateRedisBreakerOpen: the rate limiter cannot reach Redis (fail_mode decides what
# tenants see: open = local buckets at limit / live proxies, closed = 503).
resource "aws_cloudwatch_metric_alarm" "redis_breaker" {
  alarm_name          = "${var.name}-ratelimit-redis-breaker-open"
  alarm_description   = "The rate limiter's Redis circuit breaker is open on at least one proxy. Runbook: docs/operations.md#tenantgateredisbreakeropen"
  namespace           = local.ns
  metric_name         = "tenantgate_ratelimit_breaker_open"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = { Environment = local.env }

  tags = var.tags
}

# TenantGateMeteringFlushFailing: proxies cannot write usage to the store (it queues,
# then spools to disk).
resource "aws_cloudwatch_metric_alarm" "metering_flush" {
  alarm_name          = "${var.name}-metering-flush-failing"
  alarm_description   = "Usage flushes to PostgreSQL are failing on the proxies. Runbook: docs/operations.md#tenantgatemeteringflushfailing"
  namespace           = local.ns
  metric_name         = "tenantgate_metering_flush_failures_total"
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = { Environment = local.env }

  tags = var.tags
}

# TenantGateStoreUnavailable: the admin API's /health answers 503 when PostgreSQL does not.
resource "aws_cloudwatch_metric_alarm" "store_unhealthy" {
  alarm_name          = "${var.name}-store-unhealthy"
  alarm_description   = "Admin API targets fail /health (the store does not answer). Runbook: docs/operations.md#tenantgatestoreunavailable"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "UnHealthyHostCount"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = {
    LoadBalancer = var.alb_arn_suffix
    TargetGroup  = var.admin_target_group_arn_suffix
  }

  tags = var.tags
}

# TenantGateProxyFleetDegraded: fewer healthy proxies than the autoscaling minimum.
resource "aws_cloudwatch_metric_alarm" "proxy_healthy_hosts" {
  alarm_name          = "${var.name}-proxy-healthy-hosts"
  alarm_description   = "Fewer than ${var.proxy_min_tasks} healthy proxy tasks behind the ALB. Runbook: docs/operations.md#tenantgateproxyfleetdegraded"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "HealthyHostCount"
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  comparison_operator = "LessThanThreshold"
  threshold           = var.proxy_min_tasks
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = {
    LoadBalancer = var.alb_arn_suffix
    TargetGroup  = var.proxy_target_group_arn_suffix
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "db_cpu" {
  alarm_name          = "${var.name}-rds-cpu"
  alarm_description   = "RDS CPU above ${local.t.db_cpu_percent}% for 15 minutes. Runbook: docs/operations.md#tenantgatestoreunavailable"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.t.db_cpu_percent
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = { DBInstanceIdentifier = var.db_instance_identifier }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "db_free_storage" {
  alarm_name          = "${var.name}-rds-free-storage"
  alarm_description   = "RDS free storage below 10% of the allocated size. Runbook: docs/operations.md#tenantgatestoreunavailable"
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "LessThanThreshold"
  threshold           = var.db_allocated_storage_gb * 1024 * 1024 * 1024 * 0.1
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = { DBInstanceIdentifier = var.db_instance_identifier }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "redis_engine_cpu" {
  for_each = toset(var.redis_member_clusters)

  alarm_name          = "${var.name}-redis-engine-cpu-${each.value}"
  alarm_description   = "Redis engine CPU above ${local.t.redis_engine_cpu_percent}% (the limiter's Lua script runs there). Runbook: docs/operations.md#tenantgateredisbreakeropen"
  namespace           = "AWS/ElastiCache"
  metric_name         = "EngineCPUUtilization"
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.t.redis_engine_cpu_percent
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = { CacheClusterId = each.value }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "redis_memory" {
  for_each = toset(var.redis_member_clusters)

  alarm_name          = "${var.name}-redis-memory-${each.value}"
  alarm_description   = "Redis memory above ${local.t.redis_memory_percent}% of maxmemory. Runbook: docs/operations.md#tenantgateredisbreakeropen"
  namespace           = "AWS/ElastiCache"
  metric_name         = "DatabaseMemoryUsagePercentage"
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = local.t.redis_memory_percent
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  dimensions = { CacheClusterId = each.value }

  tags = var.tags
}

# ---------------------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------------------

locals {
  alb  = var.alb_arn_suffix
  ptg  = var.proxy_target_group_arn_suffix
  atg  = var.admin_target_group_arn_suffix
  cl   = var.ecs_cluster_name
  envd = ["Environment", local.env]

  widgets = [
    {
      type = "metric", x = 0, y = 0, width = 12, height = 6
      properties = {
        title = "Requests by outcome (proxy fleet)", region = local.region, stat = "Sum", period = 60, view = "timeSeries", stacked = true
        metrics = [for code in ["ok", "rate_limited", "unauthorized", "invalid_api_key", "invalid_token", "forbidden", "upstream_unavailable", "upstream_timeout", "unavailable"] :
        [local.ns, "tenantgate_proxy_requests_total", "Environment", local.env, "code", code]]
      }
    },
    {
      type = "metric", x = 12, y = 0, width = 12, height = 6
      properties = {
        title = "Response time (ALB → proxy → upstream)", region = local.region, period = 60, view = "timeSeries"
        metrics = [
          ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", local.alb, "TargetGroup", local.ptg, { stat = "p50", label = "p50" }],
          ["...", { stat = "p99", label = "p99" }],
        ]
        annotations = { horizontal = [{ label = "p99 alarm", value = local.t.p99_latency_seconds }] }
      }
    },
    {
      type = "metric", x = 0, y = 6, width = 8, height = 6
      properties = {
        title = "ALB requests and 5xx", region = local.region, stat = "Sum", period = 60, view = "timeSeries"
        metrics = [
          ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", local.alb],
          [".", "HTTPCode_Target_5XX_Count", ".", "."],
          [".", "HTTPCode_ELB_5XX_Count", ".", "."],
        ]
      }
    },
    {
      type = "metric", x = 8, y = 6, width = 8, height = 6
      properties = {
        title = "Change propagation lag (s)", region = local.region, stat = "Maximum", period = 60, view = "timeSeries"
        metrics = [
          [local.ns, "tenantgate_proxy_change_lag_seconds", local.envd[0], local.envd[1]],
        ]
        annotations = { horizontal = [{ label = "alarm", value = local.t.change_lag_seconds }] }
      }
    },
    {
      type = "metric", x = 16, y = 6, width = 8, height = 6
      properties = {
        title = "Rate limiter: Redis", region = local.region, period = 60, view = "timeSeries"
        metrics = [
          [local.ns, "tenantgate_ratelimit_breaker_open", local.envd[0], local.envd[1], { stat = "Maximum" }],
          [".", "tenantgate_ratelimit_redis_errors_total", ".", ".", { stat = "Sum" }],
          [".", "tenantgate_ratelimit_fallback_decisions_total", ".", ".", { stat = "Sum" }],
        ]
      }
    },
    {
      type = "metric", x = 0, y = 12, width = 8, height = 6
      properties = {
        title = "Healthy targets", region = local.region, stat = "Minimum", period = 60, view = "timeSeries"
        metrics = [
          ["AWS/ApplicationELB", "HealthyHostCount", "LoadBalancer", local.alb, "TargetGroup", local.ptg, { label = "proxy" }],
          ["AWS/ApplicationELB", "HealthyHostCount", "LoadBalancer", local.alb, "TargetGroup", local.atg, { label = "admin" }],
        ]
      }
    },
    {
      type = "metric", x = 8, y = 12, width = 8, height = 6
      properties = {
        title = "ECS CPU / memory (%)", region = local.region, stat = "Average", period = 60, view = "timeSeries"
        metrics = [
          ["AWS/ECS", "CPUUtilization", "ClusterName", local.cl, "ServiceName", var.proxy_service_name, { label = "proxy CPU" }],
          [".", "MemoryUtilization", ".", ".", ".", ".", { label = "proxy memory" }],
          [".", "CPUUtilization", ".", ".", ".", var.admin_service_name, { label = "admin CPU" }],
        ]
      }
    },
    {
      type = "metric", x = 16, y = 12, width = 8, height = 6
      properties = {
        title = "Metering", region = local.region, period = 60, view = "timeSeries"
        metrics = [
          [local.ns, "tenantgate_metering_pending_requests", local.envd[0], local.envd[1], { stat = "Maximum" }],
          [".", "tenantgate_metering_flush_failures_total", ".", ".", { stat = "Sum" }],
        ]
      }
    },
    {
      type = "metric", x = 0, y = 18, width = 12, height = 6
      properties = {
        title = "PostgreSQL (RDS)", region = local.region, period = 300, view = "timeSeries"
        metrics = [
          ["AWS/RDS", "CPUUtilization", "DBInstanceIdentifier", var.db_instance_identifier, { stat = "Average" }],
          [".", "DatabaseConnections", ".", ".", { stat = "Maximum", yAxis = "right" }],
        ]
      }
    },
    {
      type = "metric", x = 12, y = 18, width = 12, height = 6
      properties = {
        title = "Redis (ElastiCache)", region = local.region, period = 300, view = "timeSeries"
        metrics = flatten([for c in var.redis_member_clusters : [
          ["AWS/ElastiCache", "EngineCPUUtilization", "CacheClusterId", c, { stat = "Average" }],
          ["AWS/ElastiCache", "DatabaseMemoryUsagePercentage", "CacheClusterId", c, { stat = "Maximum" }],
        ]])
      }
    },
  ]
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = var.name
  dashboard_body = jsonencode({ widgets = local.widgets })
}
