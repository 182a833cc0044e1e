# Target tracking. Proxy fleet: ALB requests per target and CPU (whichever asks for more
# tasks wins; scale-in only when both allow it). Admin API and demo upstream: CPU.
#
# Defaults (docs/deployment.md, "Sizing"): one proxy core served ~31k req/s on the API-key
# path in benches/RESULTS.md (31.7 CPU µs a request, p99 3.7 ms at saturation). A Fargate
# vCPU is a hyperthread with noisier neighbours, real requests are bigger than the bench's
# 12-byte bodies, and ALB keep-alive pools are smaller, so the request target is set to
# ~6k req/s per 1-vCPU task (360,000 a minute, ~20 % of the measured ceiling) and CPU to
# 60 %: headroom for a zone's share of traffic landing on the other two during scale-out.

resource "aws_appautoscaling_target" "proxy" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.proxy.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = local.proxy.min
  max_capacity       = local.proxy.max

  tags = var.tags
}

resource "aws_appautoscaling_policy" "proxy_requests" {
  name               = "${var.name}-proxy-requests-per-target"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.proxy.service_namespace
  resource_id        = aws_appautoscaling_target.proxy.resource_id
  scalable_dimension = aws_appautoscaling_target.proxy.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = local.proxy.target_requests_per_minute
    scale_in_cooldown  = local.proxy.scale_in_cooldown_seconds
    scale_out_cooldown = local.proxy.scale_out_cooldown_seconds

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.public.arn_suffix}/${aws_lb_target_group.proxy.arn_suffix}"
    }
  }
}

resource "aws_appautoscaling_policy" "proxy_cpu" {
  name               = "${var.name}-proxy-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.proxy.service_namespace
  resource_id        = aws_appautoscaling_target.proxy.resource_id
  scalable_dimension = aws_appautoscaling_target.proxy.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = local.proxy.target_cpu_percent
    scale_in_cooldown  = local.proxy.scale_in_cooldown_seconds
    scale_out_cooldown = local.proxy.scale_out_cooldown_seconds

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_target" "admin" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.admin.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = local.admin.min
  max_capacity       = local.admin.max

  tags = var.tags
}

resource "aws_appautoscaling_policy" "admin_cpu" {
  name               = "${var.name}-admin-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.admin.service_namespace
  resource_id        = aws_appautoscaling_target.admin.resource_id
  scalable_dimension = aws_appautoscaling_target.admin.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = local.admin.target_cpu_percent
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_target" "demo" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.demo.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = local.demo.min
  max_capacity       = local.demo.max

  tags = var.tags
}

resource "aws_appautoscaling_policy" "demo_cpu" {
  name               = "${var.name}-demo-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.demo.service_namespace
  resource_id        = aws_appautoscaling_target.demo.resource_id
  scalable_dimension = aws_appautoscaling_target.demo.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = local.demo.target_cpu_percent
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
