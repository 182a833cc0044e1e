# One environment of tenantgate on AWS. This file is the same in dev, staging and prod;
# what differs between them is in variables.tf (defaults) and terraform.tfvars.

locals {
  environment = var.environment
  name        = "tenantgate-${var.environment}"
  azs         = var.availability_zones
  tags        = var.tags
}

module "network" {
  source = "../../modules/network"

  name                    = local.name
  cidr_block              = var.vpc_cidr
  availability_zones      = local.azs
  single_nat_gateway      = var.single_nat_gateway
  flow_log_retention_days = var.log_retention_days
  tags                    = local.tags
}

module "monitoring" {
  source = "../../modules/monitoring"

  name               = local.name
  environment        = local.environment
  log_retention_days = var.log_retention_days
  alarm_emails       = var.alarm_emails
  thresholds         = var.alarm_thresholds

  alb_arn_suffix                = module.compute.alb_arn_suffix
  proxy_target_group_arn_suffix = module.compute.proxy_target_group_arn_suffix
  admin_target_group_arn_suffix = module.compute.admin_target_group_arn_suffix
  ecs_cluster_name              = module.compute.cluster_name
  proxy_service_name            = module.compute.service_names["proxy"]
  admin_service_name            = module.compute.service_names["admin"]
  proxy_min_tasks               = var.proxy.min
  db_instance_identifier        = module.database.instance_identifier
  db_allocated_storage_gb       = var.db_allocated_storage_gb
  redis_replication_group_id    = module.cache.replication_group_id
  redis_member_clusters         = module.cache.member_clusters

  tags = local.tags
}

module "database" {
  source = "../../modules/database"

  name       = local.name
  vpc_id     = module.network.vpc_id
  subnet_ids = module.network.private_subnet_ids
  client_security_group_ids = {
    proxy = module.compute.security_group_ids["proxy"]
    admin = module.compute.security_group_ids["admin"]
    demo  = module.compute.security_group_ids["demo"]
  }

  instance_class           = var.db_instance_class
  allocated_storage_gb     = var.db_allocated_storage_gb
  max_allocated_storage_gb = var.db_max_allocated_storage_gb
  multi_az                 = var.db_multi_az
  deletion_protection      = var.db_deletion_protection
  backup_retention_days    = var.db_backup_retention_days
  require_tls              = var.store_require_tls

  tags = local.tags
}

module "cache" {
  source = "../../modules/cache"

  name       = local.name
  vpc_id     = module.network.vpc_id
  subnet_ids = module.network.private_subnet_ids
  client_security_group_ids = {
    proxy = module.compute.security_group_ids["proxy"]
  }

  node_type               = var.redis_node_type
  num_cache_clusters      = var.redis_num_cache_clusters
  transit_encryption_mode = var.redis_transit_encryption_mode
  log_retention_days      = var.log_retention_days

  tags = local.tags
}

module "compute" {
  source = "../../modules/compute"

  name                 = local.name
  environment          = local.environment
  vpc_id               = module.network.vpc_id
  public_subnet_ids    = module.network.public_subnet_ids
  private_subnet_ids   = module.network.private_subnet_ids
  private_subnet_cidrs = module.network.private_subnet_cidrs

  image                 = var.image
  image_pull_secret_arn = var.image_pull_secret_arn
  cpu_architecture      = var.cpu_architecture

  certificate_arn         = var.certificate_arn
  admin_hostname          = var.admin_hostname
  admin_allowed_cidrs     = var.admin_allowed_cidrs
  ingress_cidrs           = var.ingress_cidrs
  alb_deletion_protection = var.alb_deletion_protection

  store_url_secret_arn = module.database.store_url_secret_arn
  redis_url_secret_arn = module.cache.redis_url_secret_arn
  secret_kms_key_arns  = [module.database.kms_key_arn, module.cache.kms_key_arn]
  log_group_names      = module.monitoring.log_group_names
  log_group_arns       = module.monitoring.log_group_arns

  ratelimit_fail_mode = var.ratelimit_fail_mode
  proxy_routes        = var.proxy_routes
  extra_environment   = var.extra_environment

  proxy            = var.proxy
  admin            = var.admin
  demo             = var.demo
  use_fargate_spot = var.use_fargate_spot

  tags = local.tags
}
