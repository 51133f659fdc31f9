// chatft infrastructure: one Azure ML workspace with its dependencies, a compute identity, two clusters, and the
// Event Grid -> Storage queue -> Azure Function path that retrains on new training data.
// Deploy (Azure CLI compiles the Bicep):
//   az deployment group create --resource-group <rg> --template-file infra/main.bicep --parameters infra/main.dev.bicepparam
// Every resource lives in its own module under modules/; this file only wires them together.
targetScope = 'resourceGroup'

@description('Short name in every resource name: 3-12 lowercase letters and digits, e.g. chatftdev.')
@minLength(3)
@maxLength(12)
param baseName string

@description('Region of every resource. eastus2 offers the NC A100 v4 sizes the GPU cluster uses.')
param location string = 'eastus2'

@description('Tags applied to every resource.')
param tags object = {
  project: 'chatft'
}

// Cluster names, sizes and scale settings live once, in compute.json; the pipeline code reads the same file.
var compute = loadJsonContent('compute.json')
var trainingDataContainerName = 'training-data'
var deadLetterContainerName = 'eventgrid-deadletter'

module storage 'modules/storage_account.bicep' = {
  name: '${deployment().name}-storage'
  params: {
    baseName: baseName
    location: location
    tags: tags
    trainingDataContainerName: trainingDataContainerName
    deadLetterContainerName: deadLetterContainerName
  }
}

module keyVault 'modules/key_vault.bicep' = {
  name: '${deployment().name}-keyvault'
  params: {
    baseName: baseName
    location: location
    tags: tags
  }
}

module logAnalytics 'modules/log_analytics.bicep' = {
  name: '${deployment().name}-loganalytics'
  params: {
    baseName: baseName
    location: location
    tags: tags
  }
}

module appInsights 'modules/application_insights.bicep' = {
  name: '${deployment().name}-appinsights'
  params: {
    baseName: baseName
    location: location
    tags: tags
    logAnalyticsWorkspaceId: logAnalytics.outputs.id
  }
}

module registry 'modules/container_registry.bicep' = {
  name: '${deployment().name}-registry'
  params: {
    baseName: baseName
    location: location
    tags: tags
  }
}

module workspace 'modules/aml_workspace.bicep' = {
  name: '${deployment().name}-workspace'
  params: {
    baseName: baseName
    location: location
    tags: tags
    storageAccountId: storage.outputs.id
    keyVaultId: keyVault.outputs.id
    applicationInsightsId: appInsights.outputs.id
    containerRegistryId: registry.outputs.id
  }
}

module identity 'modules/managed_identity.bicep' = {
  name: '${deployment().name}-identity'
  params: {
    baseName: baseName
    location: location
    tags: tags
  }
}

module roleAssignments 'modules/role_assignments.bicep' = {
  name: '${deployment().name}-roles'
  params: {
    baseName: baseName
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    containerRegistryName: registry.outputs.name
  }
}

module gpuCluster 'modules/aml_compute_cluster.bicep' = {
  name: '${deployment().name}-gpu-cluster'
  params: {
    baseName: baseName
    location: location
    tags: tags
    workspaceName: workspace.outputs.name
    cluster: compute.gpu_cluster
    identityId: identity.outputs.id
    purpose: 'fine-tuning and evaluation (GPU)'
  }
}

// 4 A100s per node, up to 2 nodes: the multi-GPU presets (pipelines/config/azure-4gpu.yaml, azure-2node.yaml).
module gpuClusterX4 'modules/aml_compute_cluster.bicep' = {
  name: '${deployment().name}-gpu-cluster-x4'
  params: {
    baseName: baseName
    location: location
    tags: tags
    workspaceName: workspace.outputs.name
    cluster: compute.gpu_cluster_x4
    identityId: identity.outputs.id
    purpose: 'multi-GPU and multi-node fine-tuning (4 GPUs per node)'
  }
}

module cpuCluster 'modules/aml_compute_cluster.bicep' = {
  name: '${deployment().name}-cpu-cluster'
  params: {
    baseName: baseName
    location: location
    tags: tags
    workspaceName: workspace.outputs.name
    cluster: compute.cpu_cluster
    identityId: identity.outputs.id
    purpose: 'data preparation, validation, registration and deployment steps (CPU)'
  }
}

module retrainIdentity 'modules/managed_identity.bicep' = {
  name: '${deployment().name}-retrain-identity'
  params: {
    baseName: baseName
    location: location
    tags: tags
    purpose: 'retrain'
  }
}

module functionStorage 'modules/function_storage.bicep' = {
  name: '${deployment().name}-function-storage'
  params: {
    baseName: baseName
    location: location
    tags: tags
  }
}

module retrainQueue 'modules/retrain_queue.bicep' = {
  name: '${deployment().name}-retrain-queue'
  params: {
    baseName: baseName
    functionStorageName: functionStorage.outputs.name
  }
}

module retrainRoles 'modules/retrain_role_assignments.bicep' = {
  name: '${deployment().name}-retrain-roles'
  params: {
    baseName: baseName
    principalId: retrainIdentity.outputs.principalId
    trainingStorageName: storage.outputs.name
    functionStorageName: functionStorage.outputs.name
    workspaceName: workspace.outputs.name
  }
}

module retrainFunction 'modules/function_app.bicep' = {
  name: '${deployment().name}-retrain-function'
  params: {
    baseName: baseName
    location: location
    tags: tags
    identityId: retrainIdentity.outputs.id
    identityClientId: retrainIdentity.outputs.clientId
    functionStorageName: functionStorage.outputs.name
    functionStorageBlobEndpoint: functionStorage.outputs.blobEndpoint
    deploymentContainerName: functionStorage.outputs.deploymentContainerName
    applicationInsightsName: appInsights.outputs.name
    workspaceName: workspace.outputs.name
    trainingStorageBlobEndpoint: storage.outputs.blobEndpoint
    trainingDataContainerName: storage.outputs.trainingDataContainerName
    retrainQueueName: retrainQueue.outputs.queueName
    lockContainerName: retrainQueue.outputs.lockContainerName
  }
}

module eventGrid 'modules/event_grid.bicep' = {
  name: '${deployment().name}-eventgrid'
  params: {
    baseName: baseName
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    trainingDataContainerName: storage.outputs.trainingDataContainerName
    deadLetterContainerName: storage.outputs.deadLetterContainerName
    queueStorageName: functionStorage.outputs.name
    queueName: retrainQueue.outputs.queueName
  }
}

output workspaceName string = workspace.outputs.name
output workspaceId string = workspace.outputs.id
output identityClientId string = identity.outputs.clientId
output identityId string = identity.outputs.id
output gpuClusterName string = gpuCluster.outputs.name
output gpuClusterX4Name string = gpuClusterX4.outputs.name
output cpuClusterName string = cpuCluster.outputs.name
output storageAccountName string = storage.outputs.name
output trainingDataContainerName string = storage.outputs.trainingDataContainerName
output eventGridSystemTopicName string = eventGrid.outputs.name
output retrainSubscriptionName string = eventGrid.outputs.retrainSubscriptionName
output retrainFunctionAppName string = retrainFunction.outputs.name
output retrainQueueName string = retrainQueue.outputs.queueName
