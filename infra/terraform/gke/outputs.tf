output "cluster_name" {
  description = "GKE cluster name."
  value       = google_container_cluster.gemma.name
}

output "get_credentials" {
  description = "Command that points kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.gemma.name} --region ${var.region} --project ${var.project_id}"
}

output "model_bucket" {
  description = "Bucket for checkpoints (chart value modelStorage.gcsFuse.bucket)."
  value       = google_storage_bucket.models.name
}

output "serving_service_account" {
  description = "Google service account for Workload Identity (chart value serviceAccount.gcpServiceAccount)."
  value       = google_service_account.serving.email
}

output "image_repository" {
  description = "Artifact Registry path for the image (chart value image.repository)."
  value       = "us-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/gemma-serving"
}
