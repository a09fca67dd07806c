variable "project_id" {
  description = "Google Cloud project to create everything in."
  type        = string
}

variable "region" {
  description = "Region of the cluster, the model bucket and the Artifact Registry repository's location prefix."
  type        = string
  default     = "us-central1"
}

variable "zones" {
  description = "Zones the node pools use (GPU types are zonal: pick zones that offer L4, A100 80GB and H100)."
  type        = list(string)
  default     = ["us-central1-a", "us-central1-b", "us-central1-c"]
}

variable "cluster_name" {
  description = "Name of the GKE cluster."
  type        = string
  default     = "gemma-serving"
}

variable "release_channel" {
  description = "GKE release channel (REGULAR gives current Kubernetes with the GCS FUSE CSI driver and Gateway API)."
  type        = string
  default     = "REGULAR"
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the cluster while true."
  type        = bool
  default     = true
}

variable "cpu_pool" {
  description = "CPU node pool for the Ray head (router, Serve controller), the KubeRay operator and system pods."
  type = object({
    machine_type = string
    min_nodes    = number
    max_nodes    = number
  })
  default = {
    machine_type = "n2-standard-8"
    min_nodes    = 1
    max_nodes    = 3
  }
}

variable "gpu_node_pools" {
  description = <<-EOT
    Autoscaling GPU node pools, one per accelerator the chart's worker groups select with
    cloud.google.com/gke-accelerator. min/max are totals across zones; 0 lets the pool scale to zero.
  EOT
  type = map(object({
    machine_type      = string
    accelerator_type  = string
    accelerator_count = number
    min_nodes         = number
    max_nodes         = number
    spot              = optional(bool, false)
    disk_size_gb      = optional(number, 200)
  }))
  default = {
    l4 = {
      machine_type      = "g2-standard-8"
      accelerator_type  = "nvidia-l4"
      accelerator_count = 1
      min_nodes         = 0
      max_nodes         = 8
    }
    a100-80gb = {
      machine_type      = "a2-ultragpu-1g"
      accelerator_type  = "nvidia-a100-80gb"
      accelerator_count = 1
      min_nodes         = 0
      max_nodes         = 6
    }
    h100-80gb = {
      machine_type      = "a3-highgpu-1g"
      accelerator_type  = "nvidia-h100-80gb"
      accelerator_count = 1
      min_nodes         = 0
      max_nodes         = 6
    }
  }
}

variable "kuberay_version" {
  description = "KubeRay operator Helm chart version (the chart renders ray.io/v1 RayService for this release)."
  type        = string
  default     = "1.7.0"
}

variable "kuberay_incremental_upgrade" {
  description = "Turn on the operator's RayServiceIncrementalUpgrade feature gate (beta in KubeRay 1.7), which the chart's ray.upgradeStrategy=NewClusterWithIncrementalUpgrade needs."
  type        = bool
  default     = false
}

variable "namespace" {
  description = "Kubernetes namespace gemma-serving is installed into (for the Workload Identity binding)."
  type        = string
  default     = "gemma"
}

variable "kubernetes_service_account" {
  description = "Kubernetes service account of the Ray pods (the chart's default: <release>-gemma-serving)."
  type        = string
  default     = "gemma-gemma-serving"
}

variable "model_bucket" {
  description = "GCS bucket for model checkpoints (one directory per model), mounted read-only through GCS FUSE. Empty = <project_id>-gemma-models."
  type        = string
  default     = ""
}
