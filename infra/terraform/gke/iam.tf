# Model bucket, image repository, and the Google service account the Ray pods act as (Workload Identity).

locals {
  model_bucket = var.model_bucket != "" ? var.model_bucket : "${var.project_id}-gemma-models"
}

resource "google_storage_bucket" "models" {
  name                        = local.model_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  depends_on                  = [google_project_service.apis]
}

resource "google_artifact_registry_repository" "images" {
  repository_id = "gemma-serving"
  location      = "us"
  format        = "DOCKER"
  description   = "gemma-serving images"
  depends_on    = [google_project_service.apis]
}

resource "google_service_account" "serving" {
  account_id   = "gemma-serving"
  display_name = "gemma-serving Ray pods"
}

resource "google_storage_bucket_iam_member" "serving_reads_models" {
  bucket = google_storage_bucket.models.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.serving.email}"
}

# The chart's ServiceAccount (annotated iam.gke.io/gcp-service-account) may act as the Google service account.
resource "google_service_account_iam_member" "workload_identity" {
  service_account_id = google_service_account.serving.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/${var.kubernetes_service_account}]"
  depends_on         = [google_container_cluster.gemma]
}
