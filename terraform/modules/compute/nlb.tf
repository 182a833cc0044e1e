# Internal NLB in front of the upstreams, with one fixed private address per AZ.
#
# Why an NLB and not service discovery: tenantgate resolves a route's upstream host names
# once, at start (Pingora's static backends), so a DNS name pointing at task IPs would go
# stale when tasks are replaced. The NLB's addresses never change; the proxies list all
# three (round-robin with their own TCP health checks) and the NLB follows the tasks.

locals {
  # The 10th address of each private subnet is the NLB's (AWS reserves the first four).
  upstream_nlb_ips = [for cidr in var.private_subnet_cidrs : cidrhost(cidr, 10)]
  demo_route       = format("[{prefix = \"/api/v1/\", upstream = [%s]}]", join(", ", [for ip in local.upstream_nlb_ips : "\"${ip}:8082\""]))
}

resource "aws_lb" "upstream" {
  name                             = "${var.name}-upstream"
  load_balancer_type               = "network"
  internal                         = true
  security_groups                  = [aws_security_group.upstream_nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.alb_deletion_protection

  dynamic "subnet_mapping" {
    for_each = range(length(var.private_subnet_ids))

    content {
      subnet_id            = var.private_subnet_ids[subnet_mapping.value]
      private_ipv4_address = local.upstream_nlb_ips[subnet_mapping.value]
    }
  }

  access_logs {
    bucket  = aws_s3_bucket.access_logs.id
    prefix  = "upstream-nlb"
    enabled = true
  }

  tags = var.tags

  depends_on = [aws_s3_bucket_policy.access_logs]
}

resource "aws_lb_target_group" "demo" {
  name                 = "${var.name}-demo"
  port                 = 8082
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 15

  health_check {
    protocol            = "HTTP"
    path                = "/health"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "upstream" {
  #checkov:skip=CKV_AWS_2:Internal TCP pass-through to the upstreams, reachable only from the proxy fleet's security group; TLS to the public ends at the ALB.
  load_balancer_arn = aws_lb.upstream.arn
  port              = 8082
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.demo.arn
  }

  tags = var.tags
}
