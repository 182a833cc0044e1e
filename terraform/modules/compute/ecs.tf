# ECS on Fargate: the proxy fleet (with an ADOT sidecar publishing /metrics to CloudWatch),
# the admin API and the demo upstream. Every service migrates the store at start (sqlx
# migrations under an advisory lock), so no separate migration task is needed; the deploy
# workflow may still run `tenantgate migrate` first to fail early.

locals {
  proxy = var.proxy
  admin = var.admin
  demo  = var.demo

  data_dir = "/var/lib/tenantgate/data"

  # TENANTGATE__SECTION__KEY values are parsed as TOML: strings are quoted.
  common_env = merge({
    TENANTGATE__LOG__FORMAT     = "\"json\""
    TENANTGATE__STORE__DATA_DIR = "\"${local.data_dir}\""
  }, var.extra_environment)

  proxy_env = merge(local.common_env, {
    TENANTGATE__PROXY__LISTEN               = "\"0.0.0.0:8080\""
    TENANTGATE__PROXY__ADMIN_LISTEN         = "\"0.0.0.0:9090\""
    TENANTGATE__PROXY__THREADS              = tostring(local.proxy.threads)
    TENANTGATE__PROXY__GRACE_PERIOD_SECONDS = "10"
    TENANTGATE__RATELIMIT__BACKEND          = "\"redis\""
    TENANTGATE__RATELIMIT__FAIL_MODE        = "\"${var.ratelimit_fail_mode}\""
    TENANTGATE__ROUTES                      = coalesce(var.proxy_routes, local.demo_route)
  })

  admin_env = merge(local.common_env, {
    TENANTGATE__ADMIN__LISTEN = "\"0.0.0.0:8081\""
  })

  demo_env = merge(local.common_env, {
    TENANTGATE__UPSTREAM_DEMO__LISTEN = "\"0.0.0.0:8082\""
  })

  # Version ARNs (= the secret ARNs): tasks are defined only once the values exist.
  secret = { for k, v in aws_secretsmanager_secret_version.platform : k => v.arn }

  proxy_secrets = {
    TENANTGATE__STORE__URL               = var.store_url_secret_arn
    TENANTGATE__REDIS__URL               = var.redis_url_secret_arn
    TENANTGATE__SECURITY__API_KEY_PEPPER = local.secret["api_key_pepper"]
    # Opens the fleet's tenant-assertion signing keys (sealed in the store).
    TENANTGATE__ADMIN__SECRET_KEY = local.secret["secret_key"]
  }

  admin_secrets = {
    TENANTGATE__STORE__URL               = var.store_url_secret_arn
    TENANTGATE_ADMIN_TOKEN               = local.secret["admin_token"]
    TENANTGATE__ADMIN__SECRET_KEY        = local.secret["secret_key"]
    TENANTGATE__SECURITY__API_KEY_PEPPER = local.secret["api_key_pepper"]
  }

  demo_secrets = {
    TENANTGATE__STORE__URL = var.store_url_secret_arn
  }

  repository_credentials = var.image_pull_secret_arn == null ? {} : {
    repositoryCredentials = { credentialsParameter = var.image_pull_secret_arn }
  }

  # The ADOT collector scrapes the proxy's /metrics (same task, so 127.0.0.1) and writes
  # the series the alarms and the dashboard use as CloudWatch EMF.
  otel_config = yamlencode({
    extensions = { health_check = {} }
    receivers = {
      prometheus = {
        config = {
          global = { scrape_interval = "30s", scrape_timeout = "10s" }
          scrape_configs = [{
            job_name       = "tenantgate-proxy"
            static_configs = [{ targets = ["127.0.0.1:9090"], labels = { Environment = var.environment } }]
            metric_relabel_configs = [{
              source_labels = ["__name__"]
              regex         = "tenantgate_(proxy_requests_total|proxy_change_lag_seconds|proxy_changes_applied_total|proxy_cache_events_total|ratelimit_.+|metering_.+)"
              action        = "keep"
            }]
          }]
        }
      }
    }
    processors = {
      resourcedetection = { detectors = ["env", "ecs"] }
      batch             = { timeout = "30s" }
    }
    exporters = {
      awsemf = {
        namespace               = var.metrics_namespace
        log_group_name          = var.log_group_names["metrics"]
        log_stream_name         = "proxy-{TaskId}"
        region                  = local.region
        dimension_rollup_option = "NoDimensionRollup"
        metric_declarations = [
          {
            dimensions            = [["Environment"], ["Environment", "code"]]
            metric_name_selectors = ["tenantgate_proxy_requests_total"]
          },
          {
            dimensions = [["Environment"]]
            metric_name_selectors = [
              "tenantgate_proxy_change_lag_seconds",
              "tenantgate_proxy_changes_applied_total",
              "tenantgate_ratelimit_.+",
              "tenantgate_metering_.+",
            ]
          },
          {
            dimensions            = [["Environment", "cache", "event"]]
            metric_name_selectors = ["tenantgate_proxy_cache_events_total"]
          },
        ]
      }
    }
    service = {
      extensions = ["health_check"]
      pipelines = {
        metrics = {
          receivers  = ["prometheus"]
          processors = ["resourcedetection", "batch"]
          exporters  = ["awsemf"]
        }
      }
    }
  })

  log_config = { for svc in ["proxy", "admin", "demo", "otel"] : svc => {
    logDriver = "awslogs"
    options = {
      awslogs-group         = var.log_group_names[svc]
      awslogs-region        = local.region
      awslogs-stream-prefix = svc
    }
  } }

  data_volume_mount = [{ sourceVolume = "data", containerPath = local.data_dir, readOnly = false }]
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enhanced"
  }

  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    base              = 1
    weight            = 1
  }
}

# ---------------------------------------------------------------------------------------
# Task definitions
# ---------------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "proxy" {
  family                   = "${var.name}-proxy"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.proxy.cpu
  memory                   = local.proxy.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task["proxy"].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "data"
  }

  container_definitions = jsonencode([
    merge({
      name                   = "proxy"
      image                  = var.image
      essential              = true
      command                = ["proxy"]
      cpu                    = local.proxy.cpu - 128
      memoryReservation      = 512
      readonlyRootFilesystem = true
      privileged             = false
      user                   = "10001:10001"
      stopTimeout            = 30
      portMappings = [
        { containerPort = 8080, protocol = "tcp", name = "traffic" },
        { containerPort = 9090, protocol = "tcp", name = "health" },
      ]
      environment = [for k, v in local.proxy_env : { name = k, value = v }]
      secrets     = [for k, v in local.proxy_secrets : { name = k, valueFrom = v }]
      mountPoints = local.data_volume_mount
      healthCheck = {
        command     = ["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9090/health"]
        interval    = 10
        timeout     = 3
        retries     = 3
        startPeriod = 15
      }
      ulimits          = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      logConfiguration = local.log_config["proxy"]
    }, local.repository_credentials),
    {
      name                   = "otel-collector"
      image                  = var.otel_collector_image
      essential              = false
      cpu                    = 128
      memoryReservation      = 128
      memory                 = 256
      readonlyRootFilesystem = true
      privileged             = false
      environment            = [{ name = "AOT_CONFIG_CONTENT", value = local.otel_config }]
      dependsOn              = [{ containerName = "proxy", condition = "HEALTHY" }]
      logConfiguration       = local.log_config["otel"]
    },
  ])

  tags = var.tags
}

resource "aws_ecs_task_definition" "admin" {
  family                   = "${var.name}-admin"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.admin.cpu
  memory                   = local.admin.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task["admin"].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "data"
  }

  container_definitions = jsonencode([
    merge({
      name                   = "admin"
      image                  = var.image
      essential              = true
      command                = ["admin"]
      readonlyRootFilesystem = true
      privileged             = false
      user                   = "10001:10001"
      stopTimeout            = 30
      portMappings           = [{ containerPort = 8081, protocol = "tcp", name = "admin" }]
      environment            = [for k, v in local.admin_env : { name = k, value = v }]
      secrets                = [for k, v in local.admin_secrets : { name = k, valueFrom = v }]
      mountPoints            = local.data_volume_mount
      healthCheck = {
        command     = ["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8081/health"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 20
      }
      logConfiguration = local.log_config["admin"]
    }, local.repository_credentials),
  ])

  tags = var.tags
}

resource "aws_ecs_task_definition" "demo" {
  family                   = "${var.name}-demo-upstream"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.demo.cpu
  memory                   = local.demo.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task["demo"].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "data"
  }

  container_definitions = jsonencode([
    merge({
      name                   = "demo-upstream"
      image                  = var.image
      essential              = true
      command                = ["demo-upstream"]
      readonlyRootFilesystem = true
      privileged             = false
      user                   = "10001:10001"
      stopTimeout            = 15
      portMappings           = [{ containerPort = 8082, protocol = "tcp", name = "http" }]
      environment            = [for k, v in local.demo_env : { name = k, value = v }]
      secrets                = [for k, v in local.demo_secrets : { name = k, valueFrom = v }]
      mountPoints            = local.data_volume_mount
      healthCheck = {
        command     = ["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8082/health"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 20
      }
      logConfiguration = local.log_config["demo"]
    }, local.repository_credentials),
  ])

  tags = var.tags
}

# ---------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------

resource "aws_ecs_service" "proxy" {
  name                              = "proxy"
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.proxy.arn
  desired_count                     = local.proxy.min
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 30
  propagate_tags                    = "SERVICE"
  enable_ecs_managed_tags           = true
  enable_execute_command            = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # Without Spot: all on Fargate. With Spot: the first `min` tasks on Fargate, the rest on Spot.
  capacity_provider_strategy {
    capacity_provider = "FARGATE"
    base              = var.use_fargate_spot ? local.proxy.min : 0
    weight            = var.use_fargate_spot ? 0 : 1
  }

  dynamic "capacity_provider_strategy" {
    for_each = var.use_fargate_spot ? [1] : []

    content {
      capacity_provider = "FARGATE_SPOT"
      weight            = 1
    }
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.proxy.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.proxy.arn
    container_name   = "proxy"
    container_port   = 8080
  }

  tags = var.tags

  # Autoscaling owns the count after creation.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.https, aws_iam_role_policy.execution_secrets]
}

resource "aws_ecs_service" "admin" {
  name                              = "admin"
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.admin.arn
  desired_count                     = local.admin.min
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 60
  propagate_tags                    = "SERVICE"
  enable_ecs_managed_tags           = true
  enable_execute_command            = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.admin.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.admin.arn
    container_name   = "admin"
    container_port   = 8081
  }

  tags = var.tags

  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener_rule.admin, aws_iam_role_policy.execution_secrets]
}

resource "aws_ecs_service" "demo" {
  name                              = "demo-upstream"
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.demo.arn
  desired_count                     = local.demo.min
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 30
  propagate_tags                    = "SERVICE"
  enable_ecs_managed_tags           = true
  enable_execute_command            = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.demo.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.demo.arn
    container_name   = "demo-upstream"
    container_port   = 8082
  }

  tags = var.tags

  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.upstream, aws_iam_role_policy.execution_secrets]
}
