// Azure Machine Learning workspace, wired to its storage, key vault, Application Insights and registry.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Resource id of the default storage account.')
param storageAccountId string

@description('Resource id of the key vault.')
param keyVaultId string

@description('Resource id of Application Insights.')
param applicationInsightsId string

@description('Resource id of the container registry.')
param containerRegistryId string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-09-01' = {
  // checkov:skip=CKV_AZURE_243: a private endpoint needs a VNet, private DNS zones and a jump host or VPN; out of scope for this template (README: network isolation)
  name: 'mlw-${baseName}'
  location: location
  tags: tags
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  kind: 'Default'
  // The workspace's own identity reaches its storage, vault and registry; jobs use the compute identity.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    friendlyName: 'chatft (${baseName})'
    description: 'Fine-tuning chat models (Phi-3 family) with pipelines as code.'
    // Also where the chat endpoint's data collector writes model inputs/outputs (workspaceblobstore).
    storageAccount: storageAccountId
    keyVault: keyVaultId
    // Online deployments created with app_insights_enabled (components/deploy_endpoint/deploy_endpoint.py) send
    // their request telemetry and score.py's per-request JSON lines here.
    applicationInsights: applicationInsightsId
    containerRegistry: containerRegistryId
    publicNetworkAccess: 'Enabled'
    hbiWorkspace: false
    v1LegacyMode: false
  }
}

output id string = workspace.id
output name string = workspace.name
output principalId string = workspace.identity.principalId
