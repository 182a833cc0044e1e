terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }

  # Applied once per AWS account with local state (it creates the bucket the other
  # stacks keep their state in); keep terraform.tfstate of this stack safe, or move it
  # into the bucket afterwards with `terraform init -migrate-state` and a backend block.
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "tenantgate"
      ManagedBy = "terraform"
      Stack     = "bootstrap"
    }
  }
}
