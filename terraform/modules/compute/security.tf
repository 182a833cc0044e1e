# Who may talk to whom. The header trust depends on this: an upstream believes
# x-tenant-id because nothing but the proxy fleet can reach it.
#
#   internet ──443/80──► alb ──8080 (traffic), 9090 (health)──► proxy
#                         └──8081──► admin
#   proxy ──8082──► upstream NLB ──8082──► demo upstream      (nothing else reaches 8082)
#   proxy, admin, demo ──5432──► PostgreSQL                   (rules in modules/database)
#   proxy ──6379──► Redis                                      (rules in modules/cache)
#   proxy, admin, demo ──443──► AWS APIs, image registry, external IdPs' JWKS (via NAT)

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Public ALB of ${var.name}"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-alb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "proxy" {
  name        = "${var.name}-proxy"
  description = "tenantgate proxy fleet of ${var.name}"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-proxy" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "admin" {
  name        = "${var.name}-admin"
  description = "tenantgate admin API of ${var.name}"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-admin" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "upstream_nlb" {
  name        = "${var.name}-upstream-nlb"
  description = "Internal NLB in front of the upstreams of ${var.name}: only the proxy fleet reaches it"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-upstream-nlb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "demo" {
  name        = "${var.name}-demo-upstream"
  description = "Demo upstream of ${var.name}: trusts x-tenant-id, so only the upstream NLB reaches it"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-demo-upstream" })

  lifecycle {
    create_before_destroy = true
  }
}

# --- ALB ------------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = toset(var.ingress_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers a 301 to HTTPS (aws_lb_listener.http); no request is forwarded on it.
  for_each = toset(var.ingress_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "HTTP from ${each.value}, redirected to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_proxy" {
  for_each = toset(["8080", "9090"])

  security_group_id            = aws_security_group.alb.id
  description                  = "ALB to the proxies (${each.value == "8080" ? "traffic" : "health checks"})"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  referenced_security_group_id = aws_security_group.proxy.id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_admin" {
  security_group_id            = aws_security_group.alb.id
  description                  = "ALB to the admin API"
  ip_protocol                  = "tcp"
  from_port                    = 8081
  to_port                      = 8081
  referenced_security_group_id = aws_security_group.admin.id
}

# --- proxy ----------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "proxy_from_alb" {
  for_each = toset(["8080", "9090"])

  security_group_id            = aws_security_group.proxy.id
  description                  = "From the ALB (${each.value == "8080" ? "traffic" : "health checks"})"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_egress_rule" "proxy_to_upstream_nlb" {
  security_group_id            = aws_security_group.proxy.id
  description                  = "Proxy to the upstreams' NLB"
  ip_protocol                  = "tcp"
  from_port                    = 8082
  to_port                      = 8082
  referenced_security_group_id = aws_security_group.upstream_nlb.id
}

# --- admin ----------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "admin_from_alb" {
  security_group_id            = aws_security_group.admin.id
  description                  = "From the ALB"
  ip_protocol                  = "tcp"
  from_port                    = 8081
  to_port                      = 8081
  referenced_security_group_id = aws_security_group.alb.id
}

# --- upstream NLB and the demo upstream ------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "upstream_nlb_from_proxy" {
  security_group_id            = aws_security_group.upstream_nlb.id
  description                  = "Only the proxy fleet"
  ip_protocol                  = "tcp"
  from_port                    = 8082
  to_port                      = 8082
  referenced_security_group_id = aws_security_group.proxy.id
}

resource "aws_vpc_security_group_egress_rule" "upstream_nlb_to_demo" {
  security_group_id            = aws_security_group.upstream_nlb.id
  description                  = "NLB to the demo upstream (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = 8082
  to_port                      = 8082
  referenced_security_group_id = aws_security_group.demo.id
}

resource "aws_vpc_security_group_ingress_rule" "demo_from_upstream_nlb" {
  security_group_id            = aws_security_group.demo.id
  description                  = "Only the upstream NLB (itself reachable only from the proxies)"
  ip_protocol                  = "tcp"
  from_port                    = 8082
  to_port                      = 8082
  referenced_security_group_id = aws_security_group.upstream_nlb.id
}

# --- egress to AWS APIs, the image registry and external IdPs (HTTPS via NAT) ---------------

resource "aws_vpc_security_group_egress_rule" "https_out" {
  for_each = {
    proxy = aws_security_group.proxy.id
    admin = aws_security_group.admin.id
    demo  = aws_security_group.demo.id
  }

  security_group_id = each.value
  description       = "${each.key}: HTTPS to AWS APIs, the image registry and JWKS endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
