output "state_bucket" {
  description = "Bucket of the environments' state (backend.hcl: bucket)."
  value       = aws_s3_bucket.state.id
}

output "state_kms_key" {
  description = "KMS key alias of the state (backend.hcl: kms_key_id)."
  value       = aws_kms_alias.state.name
}

output "plan_role_arn" {
  description = "GitHub repository variable AWS_PLAN_ROLE_ARN."
  value       = aws_iam_role.plan.arn
}

output "deploy_role_arns" {
  description = "GitHub environment variable AWS_DEPLOY_ROLE_ARN of each environment."
  value       = { for env, r in aws_iam_role.deploy : env => r.arn }
}
